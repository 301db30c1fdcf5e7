//! A request head classified and routed by the array tier; see `shoal_fuzz_harness::head`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| shoal_fuzz_harness::head::check(input));
