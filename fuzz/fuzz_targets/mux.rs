//! The multiplexed hop's framing on any bytes; see `shoal_fuzz_harness::mux`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| shoal_fuzz_harness::mux::check(input));
