//! A request head routed by a CARP array; see `shoal_fuzz_harness::route`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| shoal_fuzz_harness::route::check(input));
