//! The cluster key file format.
//!
//! The file holds one line of 64 hexadecimal digits (32 bytes, either case).
//! Blank lines and lines starting with `#` are ignored, so a sample key can
//! carry a warning; anything else is an error. The parser is sans-IO: the
//! engine reads the file and hands the text here.
//!
//! Guarantees: a [`ClusterKey`] is exactly 32 bytes, and its `Debug` output
//! never shows them.

use std::fmt;

/// Length of the cluster key in bytes.
pub const CLUSTER_KEY_LEN: usize = 32;

/// The secret that authenticates heartbeats.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; CLUSTER_KEY_LEN]);

impl ClusterKey {
    /// A key from its bytes.
    pub const fn from_bytes(bytes: [u8; CLUSTER_KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The key bytes.
    pub const fn as_bytes(&self) -> &[u8; CLUSTER_KEY_LEN] {
        &self.0
    }
}

impl fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

/// Why a key file's text is not a cluster key.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyFormatError {
    /// Only blank and comment lines.
    #[error("the key file holds no key line (expected 64 hex digits)")]
    Empty,
    /// More than one key line.
    #[error("line {0}: a second key line; the key file holds exactly one")]
    ExtraLine(usize),
    /// The key line has the wrong length.
    #[error("line {line}: the key has {len} characters; expected 64 hex digits")]
    Length {
        /// 1-based line number.
        line: usize,
        /// Characters found.
        len: usize,
    },
    /// The key line holds a non-hex character.
    #[error("line {0}: the key holds a character that is not a hex digit")]
    NotHex(usize),
}

/// Parses the text of a cluster key file.
pub fn parse_cluster_key(text: &str) -> Result<ClusterKey, KeyFormatError> {
    let mut key = None;
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if key.is_some() {
            return Err(KeyFormatError::ExtraLine(line_no));
        }
        if !line.is_ascii() {
            return Err(KeyFormatError::NotHex(line_no));
        }
        if line.len() != 2 * CLUSTER_KEY_LEN {
            return Err(KeyFormatError::Length {
                line: line_no,
                len: line.len(),
            });
        }
        let mut bytes = [0u8; CLUSTER_KEY_LEN];
        for (b, pair) in bytes.iter_mut().zip(line.as_bytes().chunks(2)) {
            let hi = hex_digit(pair[0]).ok_or(KeyFormatError::NotHex(line_no))?;
            let lo = hex_digit(pair[1]).ok_or(KeyFormatError::NotHex(line_no))?;
            *b = hi << 4 | lo;
        }
        key = Some(ClusterKey(bytes));
    }
    key.ok_or(KeyFormatError::Empty)
}

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "00112233445566778899aabbccddeeffFFEEDDCCBBAA99887766554433221100";

    #[test]
    fn parses_one_hex_line_with_comments() {
        let key = parse_cluster_key(&format!("# lab only\n\n{HEX}\n")).unwrap();
        assert_eq!(key.as_bytes()[0], 0x00);
        assert_eq!(key.as_bytes()[1], 0x11);
        assert_eq!(key.as_bytes()[15], 0xff);
        assert_eq!(key.as_bytes()[16], 0xff);
        assert_eq!(key.as_bytes()[31], 0x00);
        assert_eq!(format!("{key:?}"), "ClusterKey(..)");
    }

    #[test]
    fn rejects_bad_key_files() {
        assert_eq!(
            parse_cluster_key("# only a comment\n"),
            Err(KeyFormatError::Empty)
        );
        assert_eq!(
            parse_cluster_key(&format!("{HEX}\n{HEX}\n")),
            Err(KeyFormatError::ExtraLine(2))
        );
        assert_eq!(
            parse_cluster_key("abcd\n"),
            Err(KeyFormatError::Length { line: 1, len: 4 })
        );
        let bad = format!("{}g", &HEX[..63]);
        assert_eq!(parse_cluster_key(&bad), Err(KeyFormatError::NotHex(1)));
        // A multi-byte character must not be split into byte pairs.
        let wide = format!("{}é", &HEX[..63]);
        assert!(parse_cluster_key(&wide).is_err());
    }
}
