//! The framing of a multiplexed hop (`Upgrade: shoal-mux/1`): many hop
//! tunnels between two members carried over one TCP (or TLS) connection.
//!
//! A hop tunnel is a byte stream the owner relays to its application
//! unparsed. Carried one per TCP connection, every request and answer costs
//! both members a send and a receive of their own; carried together, the
//! requests and answers that are ready at the same moment leave in one
//! send and arrive in one receive. The framing is the least that keeps the
//! tunnels apart: no HTTP, no compression.
//!
//! A frame is an 8-byte header, the stream id (4 bytes, big-endian), the
//! kind (1 byte) and the payload length (3 bytes, big-endian), then the
//! payload. The member that opened the connection (the opener) opens the
//! streams; the other (the owner) answers each opening:
//!
//! | kind | from | payload | meaning |
//! |---|---|---|---|
//! | `Open` | opener | none | a new tunnel to the owner's application |
//! | `Accept` | owner | none | connected: bytes may flow |
//! | `Refuse` | owner | none | the application did not accept a connection; the id is free |
//! | `Data` | either | 1 to [`MAX_PAYLOAD`] bytes | the tunnel's bytes |
//! | `Close` | either | none | the sender sends nothing more (a FIN) |
//! | `Reset` | either | none | the tunnel is gone, both ways |
//! | `Credit` | either | 4 bytes, big-endian | the sender read this many more bytes |
//!
//! Flow control: each side may have at most [`WINDOW`] bytes of a stream
//! unread at the other; reading gives the bytes back as `Credit`. A slow
//! client therefore holds at most a window per tunnel in either member's
//! memory, never a whole body. Anything else (an unknown kind, a payload
//! over its kind's length, `Data` past the window, a stream id the owner
//! opens) is a protocol error and ends the connection with every tunnel on
//! it.

use thiserror::Error;

/// The length of a frame header.
pub const HEADER_LEN: usize = 8;

/// The largest `Data` payload.
pub const MAX_PAYLOAD: usize = 16 * 1024;

/// How many bytes of one stream may be sent and not yet read.
pub const WINDOW: u32 = 256 * 1024;

/// The most streams open on one connection at once.
pub const MAX_STREAMS: usize = 4096;

/// What a frame says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// The opener opens a stream.
    Open,
    /// The owner connected the stream to its application.
    Accept,
    /// The owner could not connect it.
    Refuse,
    /// Bytes of the stream.
    Data,
    /// The sender's half of the stream is done.
    Close,
    /// The stream is gone.
    Reset,
    /// The sender read this many bytes of the stream.
    Credit,
}

impl Kind {
    const ALL: [Kind; 7] = [
        Kind::Open,
        Kind::Accept,
        Kind::Refuse,
        Kind::Data,
        Kind::Close,
        Kind::Reset,
        Kind::Credit,
    ];

    fn code(self) -> u8 {
        self as u8
    }

    /// The payload lengths a frame of this kind may have.
    fn allows(self, len: usize) -> bool {
        match self {
            Kind::Data => (1..=MAX_PAYLOAD).contains(&len),
            Kind::Credit => len == 4,
            _ => len == 0,
        }
    }
}

/// A frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The stream.
    pub stream: u32,
    /// What the frame says.
    pub kind: Kind,
    /// The payload's length.
    pub len: usize,
}

/// Why bytes are not a frame.
#[derive(Clone, Copy, Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// The kind byte names no kind.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// The payload length does not fit the kind.
    #[error("a {kind:?} frame cannot carry {len} bytes")]
    BadLength {
        /// The frame's kind.
        kind: Kind,
        /// Its payload length.
        len: usize,
    },
}

/// The header of a frame of `kind` on `stream` with `len` payload bytes.
///
/// # Panics
/// If `len` does not fit the kind (a `Data` frame of 0 or more than
/// [`MAX_PAYLOAD`] bytes, a `Credit` frame of other than 4): the caller
/// cuts its payload first.
pub fn header(stream: u32, kind: Kind, len: usize) -> [u8; HEADER_LEN] {
    assert!(kind.allows(len), "{kind:?} frame of {len} bytes");
    let s = stream.to_be_bytes();
    let l = (len as u32).to_be_bytes();
    [s[0], s[1], s[2], s[3], kind.code(), l[1], l[2], l[3]]
}

/// A whole `Credit` frame giving back `n` bytes of `stream`.
pub fn credit(stream: u32, n: u32) -> [u8; HEADER_LEN + 4] {
    let mut out = [0u8; HEADER_LEN + 4];
    out[..HEADER_LEN].copy_from_slice(&header(stream, Kind::Credit, 4));
    out[HEADER_LEN..].copy_from_slice(&n.to_be_bytes());
    out
}

/// The header at the start of `buf`: `Ok(None)` while fewer than
/// [`HEADER_LEN`] bytes are there (the payload may still be missing: the
/// caller waits for `len` more).
pub fn parse(buf: &[u8]) -> Result<Option<Header>, FrameError> {
    let Some(h) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let stream = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
    let kind = *Kind::ALL
        .iter()
        .find(|k| k.code() == h[4])
        .ok_or(FrameError::UnknownKind(h[4]))?;
    let len = u32::from_be_bytes([0, h[5], h[6], h[7]]) as usize;
    if !kind.allows(len) {
        return Err(FrameError::BadLength { kind, len });
    }
    Ok(Some(Header { stream, kind, len }))
}

/// A `Credit` frame's count (its 4-byte payload).
pub fn credit_count(payload: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = payload.len().min(4);
    b[..n].copy_from_slice(&payload[..n]);
    u32::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_header_reads_back_as_written() {
        for kind in Kind::ALL {
            let len = match kind {
                Kind::Data => MAX_PAYLOAD,
                Kind::Credit => 4,
                _ => 0,
            };
            let h = header(0x0102_0304, kind, len);
            assert_eq!(
                parse(&h),
                Ok(Some(Header {
                    stream: 0x0102_0304,
                    kind,
                    len
                }))
            );
            assert_eq!(parse(&h[..HEADER_LEN - 1]), Ok(None));
        }
        let c = credit(7, 300_000);
        let h = parse(&c).unwrap().unwrap();
        assert_eq!((h.stream, h.kind, h.len), (7, Kind::Credit, 4));
        assert_eq!(credit_count(&c[HEADER_LEN..]), 300_000);
    }

    #[test]
    fn kinds_and_lengths_outside_the_table_are_errors() {
        let mut h = header(1, Kind::Open, 0);
        h[4] = 7;
        assert_eq!(parse(&h), Err(FrameError::UnknownKind(7)));
        let mut h = header(1, Kind::Data, 1);
        h[5..8].copy_from_slice(&[0, 0, 0]);
        assert_eq!(
            parse(&h),
            Err(FrameError::BadLength {
                kind: Kind::Data,
                len: 0
            })
        );
        let mut h = header(1, Kind::Data, 1);
        h[5..8].copy_from_slice(&[0, 0x40, 0x01]);
        assert!(parse(&h).is_err(), "16 KiB + 1 of data");
        let mut h = header(1, Kind::Close, 0);
        h[7] = 1;
        assert!(parse(&h).is_err(), "a Close with a payload");
        let mut h = header(1, Kind::Credit, 4);
        h[7] = 3;
        assert!(parse(&h).is_err(), "a Credit of 3 bytes");
    }

    proptest! {
        #[test]
        fn any_eight_bytes_parse_or_fail_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            if let Ok(Some(h)) = parse(&bytes) {
                prop_assert!(h.kind.allows(h.len));
                prop_assert_eq!(&header(h.stream, h.kind, h.len)[..], &bytes[..HEADER_LEN]);
            }
        }
    }
}
