//! Damaged configurations never panic, and every error they produce points
//! at a line that exists.
//!
//! Deterministic mutations of every example: drop a line, repeat a line,
//! truncate the file, and overwrite each value with values of other types
//! and edge cases.

use std::path::Path;

use shoal_config::parse;

const EXAMPLES: &[&str] = &[
    "lab-3host.toml",
    "lab-3host-weighted.toml",
    "multicast.toml",
    "igmp.toml",
    "ipv6.toml",
    "rules.toml",
];

const VALUES: &[&str] = &[
    "0",
    "-1",
    "65536",
    "9223372036854775807",
    "1.5",
    "true",
    "\"\"",
    "\"all\"",
    "\"10.0.0.100\"",
    "[]",
    "[1, 2, 3]",
    "[\"x\"]",
    "{}",
    "{ 1 = 1, 70 = 1 }",
    "[{ core = 1 }]",
    "1979-05-27T07:32:00Z",
];

/// Parses `text`; on errors, checks each names a line inside the text.
fn check(text: &str, what: &str) -> bool {
    let lines = text.lines().count().max(1);
    match parse(text, Path::new("m.toml")) {
        Ok(c) => {
            // Anything accepted must survive its own normalization.
            let again = parse(&c.to_normalized_toml(), Path::new("m.toml"));
            assert_eq!(again.as_ref(), Ok(&c), "{what}");
            true
        }
        Err(errors) => {
            assert!(!errors.is_empty(), "{what}: empty error list");
            for e in &errors {
                if let Some(line) = e.line {
                    assert!(
                        (1..=lines + 1).contains(&line),
                        "{what}: line {line} outside 1..={lines}: {e}"
                    );
                }
                assert!(
                    !e.reason.is_empty() && !e.reason.contains('\n'),
                    "{what}: {e}"
                );
            }
            false
        }
    }
}

#[test]
fn mutated_examples_never_panic() {
    let mut accepted = 0usize;
    let mut rejected = 0usize;
    for name in EXAMPLES {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples")
            .join(name);
        let text = std::fs::read_to_string(&path).expect("example exists");
        let lines: Vec<&str> = text.lines().collect();
        let mut tally = |ok: bool| {
            if ok {
                accepted += 1;
            } else {
                rejected += 1;
            }
        };
        for i in 0..lines.len() {
            let mut dropped = lines.clone();
            dropped.remove(i);
            tally(check(
                &dropped.join("\n"),
                &format!("{name}: drop line {}", i + 1),
            ));

            let mut repeated = lines.clone();
            repeated.insert(i, lines[i]);
            tally(check(
                &repeated.join("\n"),
                &format!("{name}: repeat line {}", i + 1),
            ));

            if let Some((key, _)) = lines[i].split_once(" = ") {
                for value in VALUES {
                    let mut changed = lines.clone();
                    let line = format!("{key} = {value}");
                    changed[i] = &line;
                    tally(check(
                        &changed.join("\n"),
                        &format!("{name}: line {} = {value}", i + 1),
                    ));
                }
            }
        }
        for cut in (0..text.len()).step_by(7) {
            if text.is_char_boundary(cut) {
                tally(check(&text[..cut], &format!("{name}: cut at {cut}")));
            }
        }
    }
    // The mutations must exercise both outcomes.
    assert!(accepted > 50, "accepted {accepted}");
    assert!(rejected > 500, "rejected {rejected}");
}
