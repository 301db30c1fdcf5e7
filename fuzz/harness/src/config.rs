//! Fuzz target `config`: any UTF-8 text through [`shoal_config::parse`].
//!
//! # What is checked
//!
//! Beyond "never panics" (the crate's own guarantee), the contracts the
//! crate docs promise about the result:
//!
//! - an `Err` holds at least one error, and every error formats to a
//!   message naming the file;
//! - an `Ok` configuration written out with `to_normalized_toml` parses
//!   back (same path) to an equal configuration;
//! - its [`shoal_config::Config::spec`] is a pure function (two calls are
//!   equal), has an IPv4 primary VIP among its VIPs, and no two of its port
//!   rules overlap.

use std::net::IpAddr;
use std::path::Path;

use shoal_config::parse;

/// The path every input is parsed as.
pub const PATH: &str = "fuzz.toml";

/// The fuzz target's body.
///
/// # Panics
/// When a contract in the module docs breaks.
pub fn check(text: &str) {
    let path = Path::new(PATH);
    let config = match parse(text, path) {
        Ok(config) => config,
        Err(errors) => {
            assert!(!errors.is_empty(), "Err without errors for {text:?}");
            for e in &errors {
                let message = e.to_string();
                assert!(
                    message.contains(PATH),
                    "error message does not name the file: {message:?}"
                );
            }
            return;
        }
    };
    let normalized = config.to_normalized_toml();
    match parse(&normalized, path) {
        Ok(again) => assert_eq!(
            again, config,
            "normalized form parses to a different config:\n{normalized}"
        ),
        Err(errors) => panic!("normalized form does not parse: {errors}\n{normalized}"),
    }
    let spec = config.spec(0x5eed);
    assert_eq!(spec, config.spec(0x5eed), "spec() is not a pure function");
    assert!(
        spec.vips.contains(&IpAddr::V4(config.primary_vip())),
        "primary VIP {} not among {:?}",
        config.primary_vip(),
        spec.vips
    );
    for (i, a) in spec.rules.iter().enumerate() {
        for b in &spec.rules[i + 1..] {
            assert!(!a.overlaps(b), "accepted overlapping rules {a:?} and {b:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../config/examples");

    #[test]
    fn every_example_passes_the_checks() {
        let mut seen = 0;
        for entry in std::fs::read_dir(EXAMPLES).expect("config/examples") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).expect("read example");
                assert!(parse(&text, Path::new(PATH)).is_ok(), "{}", path.display());
                check(&text);
                seen += 1;
            }
        }
        assert!(seen >= 3, "only {seen} examples");
    }

    #[test]
    fn broken_text_is_reported_not_panicked() {
        for text in [
            "",
            "[cluster",
            "[cluster]\nvips = [\"::1\"]\n",
            "\u{0}",
            "[[rule]]\nports = 70000",
        ] {
            check(text);
            assert!(parse(text, Path::new(PATH)).is_err(), "{text:?} accepted");
        }
    }
}
