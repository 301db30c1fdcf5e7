//! A frame judged by a three-member cluster; see `shoal_fuzz_harness::classify`.
#![no_main]

libfuzzer_sys::fuzz_target!(|frame: &[u8]| shoal_fuzz_harness::classify::check(frame));
