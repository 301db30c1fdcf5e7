//! The cluster key file format.
//!
//! The file holds one line of 64 hexadecimal digits (32 bytes, either case).
//! Blank lines and lines starting with `#` are ignored, so a sample key can
//! carry a warning; anything else is an error. The parser is sans-IO: the
//! engine reads the file and hands the text here.
//!
//! Guarantees: a [`ClusterKey`] is exactly 32 bytes, and its `Debug` output
//! never shows them.
//!
//! A running host only takes a key file that is private to root and is not
//! the sample published in `config/examples/` ([`key_file_problems`]); the
//! offline tools take any key.

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

/// The sample key file shipped in `config/examples/` (published, so not
/// a secret: a running host refuses it).
pub const EXAMPLE_KEY_FILE: &str = include_str!("../examples/cluster.key");

impl ClusterKey {
    /// Whether this is the published sample key of `config/examples/`.
    pub fn is_published_example(&self) -> bool {
        parse_cluster_key(EXAMPLE_KEY_FILE).is_ok_and(|k| k == *self)
    }
}

/// Why a running host must not use a key file.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileProblem {
    /// Group or others have some access to the file.
    #[error("group or others can access it (mode {mode:04o}); make it private with `chmod 600`")]
    Shared {
        /// The file's permission bits.
        mode: u32,
    },
    /// The file's owner is not root.
    #[error("it is owned by uid {uid}, not root; give it to root with `chown root:`")]
    NotRootOwned {
        /// The owner's uid.
        uid: u32,
    },
    /// The key is the published sample.
    #[error(
        "it holds the sample key published in config/examples/, with which anyone can forge \
         heartbeats"
    )]
    PublishedExample,
}

/// Everything that makes a key file unfit for a running host, from its
/// permission bits `mode`, its owner `uid` and the `key` it holds: group or
/// others may not access it, root must own it, and it must not be the
/// published sample. Empty when the file is fit.
pub fn key_file_problems(mode: u32, uid: u32, key: &ClusterKey) -> Vec<KeyFileProblem> {
    let mut problems = Vec::new();
    if mode & 0o077 != 0 {
        problems.push(KeyFileProblem::Shared {
            mode: mode & 0o7777,
        });
    }
    if uid != 0 {
        problems.push(KeyFileProblem::NotRootOwned { uid });
    }
    if key.is_published_example() {
        problems.push(KeyFileProblem::PublishedExample);
    }
    problems
}

/// Writes `bytes` as the text of a key file that [`parse_cluster_key`]
/// reads back as the same key.
pub fn format_cluster_key(key: &ClusterKey) -> String {
    let hex: String = key.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "# shoal cluster key (made by `shoal keygen`): the same file on every host,\n\
         # mode 0600, owned by root. Whoever holds it can join the cluster.\n{hex}\n"
    )
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

    #[test]
    fn formatted_keys_parse_back() {
        let key = parse_cluster_key(HEX).unwrap();
        assert_eq!(parse_cluster_key(&format_cluster_key(&key)), Ok(key));
    }

    #[test]
    fn a_running_host_takes_only_a_private_root_key_that_is_not_the_sample() {
        let key = parse_cluster_key(HEX).unwrap();
        assert_eq!(key_file_problems(0o600, 0, &key), vec![]);
        assert_eq!(key_file_problems(0o400, 0, &key), vec![]);
        assert_eq!(
            key_file_problems(0o100640, 0, &key),
            vec![KeyFileProblem::Shared { mode: 0o640 }]
        );
        assert_eq!(
            key_file_problems(0o604, 0, &key),
            vec![KeyFileProblem::Shared { mode: 0o604 }]
        );
        assert_eq!(
            key_file_problems(0o600, 1000, &key),
            vec![KeyFileProblem::NotRootOwned { uid: 1000 }]
        );
        let sample = parse_cluster_key(EXAMPLE_KEY_FILE).unwrap();
        assert!(sample.is_published_example());
        assert!(!key.is_published_example());
        assert_eq!(
            key_file_problems(0o600, 0, &sample),
            vec![KeyFileProblem::PublishedExample]
        );
        for p in key_file_problems(0o644, 1000, &sample) {
            let text = p.to_string();
            assert!(
                text.contains("chmod") || text.contains("chown") || text.contains("published"),
                "{text}"
            );
        }
    }
}
