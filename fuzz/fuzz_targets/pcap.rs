//! Bytes as a capture file; see `shoal_fuzz_harness::pcap`.
#![no_main]

libfuzzer_sys::fuzz_target!(|file: &[u8]| shoal_fuzz_harness::pcap::check(file));
