//! Configuration text through the parser; see `shoal_fuzz_harness::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|text: &str| shoal_fuzz_harness::config::check(text));
