//! The HTTP/1.1 framing codec on any bytes; see `shoal_fuzz_harness::h1`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| shoal_fuzz_harness::h1::check(input));
