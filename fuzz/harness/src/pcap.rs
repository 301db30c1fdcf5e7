//! Fuzz target `pcap`: any bytes as a capture file through
//! [`shoal_dataplane::pcap::frames`].
//!
//! # What is checked
//!
//! The reader's contract: no panic; an error ends the iteration (nothing
//! follows an `Err` item); the number of items is bounded by the file
//! length (every record or block takes at least 12 bytes); every frame
//! borrows from inside the file. Ethernet frames also go through
//! [`parse_frame`], so the fuzzer reaches the frame parser through
//! capture files as the engine's pcap replay does.

use shoal_dataplane::packet::parse_frame;
use shoal_dataplane::pcap::{frames, LINKTYPE_ETHERNET};

/// Smallest size of one record or block.
const MIN_ITEM_LEN: usize = 12;

/// The fuzz target's body.
///
/// # Panics
/// When a contract in the module docs breaks.
pub fn check(file: &[u8]) {
    let mut items = match frames(file) {
        Ok(items) => items,
        Err(e) => {
            assert!(!e.to_string().is_empty());
            return;
        }
    };
    let bound = file.len() / MIN_ITEM_LEN + 1;
    let within = file.as_ptr_range();
    let mut count = 0;
    while let Some(item) = items.next() {
        count += 1;
        assert!(
            count <= bound,
            "more than {bound} items from {} bytes",
            file.len()
        );
        match item {
            Ok(frame) => {
                let data = frame.data.as_ptr_range();
                assert!(
                    frame.data.is_empty() || (within.start <= data.start && data.end <= within.end),
                    "frame {count} does not borrow from the file"
                );
                if frame.link_type == LINKTYPE_ETHERNET {
                    let _ = parse_frame(frame.data);
                }
            }
            Err(e) => {
                assert!(!e.to_string().is_empty());
                assert!(items.next().is_none(), "an item after the error {e:?}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeds::{capture_files, cluster_frames};

    #[test]
    fn synthesized_captures_and_every_truncation_pass() {
        let all = cluster_frames();
        let refs: Vec<&[u8]> = all.iter().take(12).map(Vec::as_slice).collect();
        for file in capture_files(&refs) {
            for cut in 0..=file.len() {
                check(&file[..cut]);
            }
        }
    }
}
