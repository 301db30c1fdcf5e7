//! Fuzz target `mux`: the multiplexed hop's framing
//! (`shoal_dataplane::array::mux`) on any bytes.
//!
//! # The input
//!
//! A stream of bytes as one member would receive them from another, read
//! frame by frame the way the engine's driver reads them: a header, then
//! its payload once it is all there.
//!
//! # What is checked
//!
//! - Parsing never panics, whatever the bytes, and stops at the first error.
//! - Every header that parses is one the framing can write: its kind allows
//!   its length, and writing it back gives the same 8 bytes.
//! - A `Credit` frame's count reads back as written.

use shoal_dataplane::array::mux::{credit, credit_count, header, parse, Kind, HEADER_LEN};

/// The fuzz target's body.
///
/// # Panics
/// When a contract in the module docs breaks.
pub fn check(input: &[u8]) {
    let mut at = 0;
    while let Ok(Some(h)) = parse(&input[at..]) {
        assert_eq!(
            header(h.stream, h.kind, h.len),
            input[at..at + HEADER_LEN],
            "{h:?} does not write back as read"
        );
        let end = at + HEADER_LEN + h.len;
        let Some(payload) = input.get(at + HEADER_LEN..end) else {
            return;
        };
        if h.kind == Kind::Credit {
            let n = credit_count(payload);
            assert_eq!(credit(h.stream, n)[..], input[at..end]);
        }
        at = end;
    }
}

/// Seed inputs: an opening, its acceptance, data both ways, credit, a
/// close and a reset, back to back.
pub fn seeds() -> Vec<Vec<u8>> {
    let mut talk = Vec::new();
    talk.extend_from_slice(&header(1, Kind::Open, 0));
    talk.extend_from_slice(&header(1, Kind::Accept, 0));
    let request = b"GET / HTTP/1.1\r\nHost: shop.lab\r\n\r\n";
    talk.extend_from_slice(&header(1, Kind::Data, request.len()));
    talk.extend_from_slice(request);
    talk.extend_from_slice(&credit(1, 65_536));
    talk.extend_from_slice(&header(1, Kind::Close, 0));
    talk.extend_from_slice(&header(3, Kind::Reset, 0));
    talk.extend_from_slice(&header(5, Kind::Refuse, 0));
    vec![talk, header(7, Kind::Data, 3).to_vec()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_pass_the_checks() {
        for seed in seeds() {
            check(&seed);
        }
    }
}
