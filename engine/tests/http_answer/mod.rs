//! A parsed HTTP/1 response, for the proxy tests that speak to shoal over
//! plain sockets.

use std::collections::HashMap;

/// A parsed response: status, headers (lower-case names), body, and the
/// ALPN protocol when it came over TLS.
pub struct Answer {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: String,
    #[allow(dead_code)] // read by the TLS test only
    pub alpn: Option<Vec<u8>>,
}

impl Answer {
    /// The value of header `name` (lower case), or "".
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map_or("", String::as_str)
    }
}

/// Parses a whole response (status 0 when the status line is unreadable).
pub fn parse(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: body.to_string(),
        alpn: None,
    }
}
