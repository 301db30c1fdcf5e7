//! Fuzz target `h1`: the HTTP/1.1 framing codec
//! (`shoal_dataplane::array::h1`) on any bytes, as a relay would meet them.
//!
//! # The input
//!
//! Bytes read from a connection: a head, then whatever follows it. The
//! head is parsed as a request and, separately, as a response; the
//! remainder (the bytes after the parsed head, or after the first empty
//! line when neither parses, or the whole input) is walked as a body.
//!
//! # What is checked
//!
//! - Parsing, framing and the field helpers never panic.
//! - A parsed head keeps its limits and its ranges fit the buffer; the
//!   start line, the field lines (contiguous, each ending in CRLF) and the
//!   final CRLF tile the head exactly, and parsing just the head gives the
//!   same result.
//! - The parsers keep their contract: `Ok(None)` only below `max_head`,
//!   `TooLarge` only at or above it; a parse under smaller limits agrees
//!   with one under larger limits whenever the head fits both.
//! - A body walked in two pieces (split where the input says) ends at the
//!   same byte, with the same verdict or error, as walked whole; consumed
//!   bytes are a prefix of what was given, and all of it unless done.

use shoal_dataplane::array::h1::{
    field_is, has_token, keep_alive, parse_request, parse_response, request_framing,
    response_framing, Body, Field, Framing, HeadError, Progress, RequestHead, ResponseHead,
};

/// The generous limits.
const MAX_HEAD: usize = 4096;
const MAX_FIELDS: usize = 32;

/// Checks what every parsed head shares: the field lines from `first` are
/// contiguous and end two bytes before `len`, where the head's CRLF is.
fn check_fields(buf: &[u8], first: usize, len: usize, fields: &[Field]) {
    assert!(len <= buf.len() && len >= 2, "len {len} of {}", buf.len());
    assert_eq!(&buf[len - 2..len], b"\r\n", "the head does not end in CRLF");
    let mut at = first;
    for f in fields {
        assert_eq!(f.line.start, at, "{f:?} does not follow the line before");
        assert!(f.line.end <= len - 2, "{f:?} runs past the head");
        assert_eq!(&buf[f.line.end - 2..f.line.end], b"\r\n", "{f:?}");
        assert_eq!(f.name.start, f.line.start, "{f:?}");
        assert!(!f.name.is_empty() && f.name.end < f.line.end, "{f:?}");
        assert_eq!(buf[f.name.end], b':', "{f:?}: no colon after the name");
        assert!(
            f.value.start > f.name.end && f.value.start <= f.value.end,
            "{f:?}"
        );
        assert!(f.value.end <= f.line.end - 2, "{f:?}");
        let value = &buf[f.value.clone()];
        assert!(
            !value.starts_with(b" ") && !value.ends_with(b" "),
            "{f:?}: untrimmed"
        );
        at = f.line.end;
    }
    assert_eq!(at, len - 2, "the field lines do not reach the final CRLF");
}

fn check_request(buf: &[u8], h: &RequestHead, fields: &[Field], max_head: usize) {
    assert!(h.len <= max_head, "{h:?} over {max_head}");
    assert!(h.minor <= 1, "{h:?}");
    assert!(!h.method.is_empty() && !h.target.is_empty(), "{h:?}");
    assert_eq!(h.method.end + 1, h.target.start, "{h:?}");
    assert!(
        h.method.start <= 8
            && buf[..h.method.start]
                .iter()
                .all(|&b| b == b'\r' || b == b'\n')
    );
    let version = [&b" HTTP/1."[..], &[b'0' + h.minor], b"\r\n"].concat();
    let first = h.target.end + version.len();
    assert_eq!(&buf[h.target.end..first], &version[..], "{h:?}");
    check_fields(buf, first, h.len, fields);
}

fn check_response(buf: &[u8], h: &ResponseHead, fields: &[Field], max_head: usize) {
    assert!(h.len <= max_head, "{h:?} over {max_head}");
    assert!(h.minor <= 1 && (100..=599).contains(&h.status), "{h:?}");
    assert!(
        h.reason.start >= 12 && h.reason.start <= h.reason.end,
        "{h:?}"
    );
    check_fields(buf, h.reason.end + 2, h.len, fields);
}

/// The parsers' size contract for a result that is not a head.
fn check_limit<T>(r: &Result<Option<T>, HeadError>, len: usize, max_head: usize) {
    match r {
        Ok(None) => assert!(len < max_head, "Ok(None) at {len} of {max_head}"),
        Err(HeadError::TooLarge) => assert!(len >= max_head, "TooLarge at {len} of {max_head}"),
        _ => {}
    }
}

/// A body walked whole, and in two pieces split at `cut`.
fn check_body(framing: Framing, input: &[u8], cut: usize) {
    let whole = Body::new(framing).advance(input);
    if let Ok(p) = whole {
        assert!(p.consumed <= input.len(), "{framing:?}: {p:?}");
        assert!(
            p.done || p.consumed == input.len(),
            "{framing:?}: {p:?} stopped early"
        );
    }
    let cut = cut % (input.len() + 1);
    let mut body = Body::new(framing);
    let split = body.advance(&input[..cut]).and_then(|first| {
        if first.done {
            return Ok(first);
        }
        assert_eq!(first.consumed, cut, "{framing:?}: stopped early, not done");
        let second = body.advance(&input[cut..])?;
        Ok(Progress {
            consumed: cut + second.consumed,
            done: second.done,
        })
    });
    assert_eq!(split, whole, "{framing:?} split at {cut} differs");
    if let Ok(p) = split {
        assert_eq!(body.done(), p.done, "{framing:?}");
    }
}

/// The fuzz target's body.
///
/// # Panics
/// When a contract in the module docs breaks.
pub fn check(input: &[u8]) {
    let mut fields = Vec::new();
    let mut small_fields = Vec::new();
    // Smaller limits the fuzzer reaches, taken from the input's length.
    let small_head = input.len() * 3 / 4;
    let small_count = input.len() % 5;
    let mut remainder = None;

    let r = parse_request(input, MAX_HEAD, MAX_FIELDS, &mut fields);
    check_limit(&r, input.len(), MAX_HEAD);
    let small = parse_request(input, small_head, small_count, &mut small_fields);
    check_limit(&small, input.len(), small_head);
    if let Ok(Some(h)) = &small {
        check_request(input, h, &small_fields, small_head);
        assert_eq!(r, small, "the limits changed the head");
        assert_eq!(fields, small_fields);
    }
    if let Ok(Some(h)) = &r {
        check_request(input, h, &fields, MAX_HEAD);
        if h.len <= small_head && fields.len() <= small_count {
            assert_eq!(small, r, "a head within the smaller limits was refused");
        }
        let again = parse_request(&input[..h.len], MAX_HEAD, MAX_FIELDS, &mut small_fields);
        assert_eq!(again, r, "the head alone parses differently");
        assert_eq!(small_fields, fields);
        let framing = request_framing(input, &fields);
        let _ = keep_alive(input, &fields, h.minor);
        let _ = has_token(input, &fields, b"expect", b"100-continue");
        let te = fields
            .iter()
            .any(|f| field_is(input, f, b"transfer-encoding"));
        let cl = fields.iter().any(|f| field_is(input, f, b"content-length"));
        match framing {
            Ok(Framing::Chunked) => assert!(te && !cl),
            Ok(Framing::Length(n)) => assert!(cl && !te && n > 0),
            Ok(Framing::Close) => panic!("a request framed by close"),
            Ok(Framing::Empty) | Err(_) => {}
        }
        remainder = Some(h.len);
    }

    let r = parse_response(input, MAX_HEAD, MAX_FIELDS, &mut fields);
    check_limit(&r, input.len(), MAX_HEAD);
    let small = parse_response(input, small_head, small_count, &mut small_fields);
    check_limit(&small, input.len(), small_head);
    if let Ok(Some(h)) = &small {
        check_response(input, h, &small_fields, small_head);
        assert_eq!(r, small, "the limits changed the head");
    }
    if let Ok(Some(h)) = &r {
        check_response(input, h, &fields, MAX_HEAD);
        if h.len <= small_head && fields.len() <= small_count {
            assert_eq!(small, r, "a head within the smaller limits was refused");
        }
        let flags = input.len();
        let framing = response_framing(input, &fields, h.status, flags & 1 == 1, flags & 2 == 2);
        if matches!(h.status, 100..=199 | 204 | 304) {
            assert_eq!(framing, Ok(Framing::Empty));
        }
        let _ = keep_alive(input, &fields, h.minor);
        remainder = remainder.or(Some(h.len));
    }

    let start = remainder
        .or_else(|| {
            input
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .map(|i| i + 4)
        })
        .unwrap_or(0);
    let rest = &input[start..];
    let cut = input.iter().take(16).fold(input.len(), |a, &b| {
        a.wrapping_mul(31).wrapping_add(usize::from(b))
    });
    check_body(Framing::Chunked, rest, cut);
    check_body(Framing::Length(cut as u64 % 64), rest, cut / 7);
    check_body(Framing::Close, rest, cut);
    check_body(Framing::Empty, rest, cut);
}

/// Seed inputs: requests and responses of every framing, with pipelined
/// bytes after them.
pub fn seeds() -> Vec<Vec<u8>> {
    let inputs: [&[u8]; 12] = [
        b"GET /api/v1/items?id=7 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /next HTTP/1.1\r\nHost: a\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n7;ext=\"x y\"\r\npedia i\r\n0\r\nX-Sum: 9\r\n\r\nGET / HTTP/1.1\r\n\r\n",
        b"POST /form HTTP/1.0\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello",
        b"\r\nPUT /x HTTP/1.1\r\nContent-Length: 3, 3\r\nExpect: 100-continue\r\n\r\nabc",
        b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n0\r\n\r\n",
        b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\na\r\n0123456789\r\n0\r\n\r\n",
        b"HTTP/1.0 404\r\nConnection: close\r\n\r\nnot found",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 \r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: shoal-mux/1\r\n\r\n",
    ];
    inputs.iter().map(|i| i.to_vec()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_and_junk_pass_the_check() {
        for seed in seeds() {
            check(&seed);
        }
        check(b"");
        check(b"\r\n\r\n");
        check(&[0xff; 64]);
        check(b"GET / HTTP/1.1\r\nHost : a\r\n\r\n");
        check(b"HTTP/1.1 200 OK\r\n\n\r\n");
        check(b"0\r\n\r\n0\r\n\r\n0\r\n\r\n");
    }

    #[test]
    fn a_seed_request_with_a_chunked_body_ends_before_the_next_request() {
        let seed = &seeds()[2];
        let mut fields = Vec::new();
        let h = parse_request(seed, MAX_HEAD, MAX_FIELDS, &mut fields)
            .unwrap()
            .unwrap();
        assert_eq!(request_framing(seed, &fields), Ok(Framing::Chunked));
        let rest = &seed[h.len..];
        let p = Body::new(Framing::Chunked).advance(rest).unwrap();
        assert!(p.done);
        assert_eq!(&rest[p.consumed..], b"GET / HTTP/1.1\r\n\r\n");
        check_body(Framing::Chunked, rest, 7);
    }

    #[test]
    #[should_panic(expected = "does not follow")]
    fn a_gap_between_field_lines_is_caught() {
        let buf = b"X: a\r\nY: b\r\n\r\n";
        let fields = [
            Field {
                name: 0..1,
                value: 3..4,
                line: 0..6,
            },
            Field {
                name: 7..8,
                value: 10..11,
                line: 7..12,
            },
        ];
        check_fields(buf, 0, buf.len(), &fields);
    }
}
