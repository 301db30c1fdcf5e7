//! The array hop header verified on any bytes; see `shoal_fuzz_harness::member`.
#![no_main]

libfuzzer_sys::fuzz_target!(|input: &[u8]| shoal_fuzz_harness::member::check(input));
