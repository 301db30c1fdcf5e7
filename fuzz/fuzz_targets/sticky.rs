//! The sticky cookie and forwarding-field parsers on any bytes; see `shoal_fuzz_harness::sticky`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| shoal_fuzz_harness::sticky::check(input));
