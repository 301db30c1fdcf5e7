//! The operator surface of the `shoal` binary: man pages, shell
//! completions and the log format, through the real binary.

use std::path::PathBuf;
use std::process::Command;

fn shoal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_shoal"))
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("shoal-ops-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn man_writes_one_page_per_command_and_subcommand() {
    let dir = scratch("man");
    let out = shoal().arg("man").arg(&dir).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    for page in [
        "shoal.1",
        "shoal-run.1",
        "shoal-config.1",
        "shoal-config-check.1",
        "shoal-carp-route.1",
        "shoal-cleanup.1",
        "shoal-query.1",
    ] {
        let text =
            std::fs::read_to_string(dir.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(
            text.starts_with(".ie") || text.contains(".TH"),
            "{page}: {text}"
        );
    }
    let run = std::fs::read_to_string(dir.join("shoal-run.1")).unwrap();
    assert!(run.contains(".TH shoal-run 1  \"shoal-run 0."), "{run}");
    assert!(run.contains("\\-\\-config"), "{run}");
    // Every subcommand the binary has, and no page for clap's `help`.
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(!listed.contains("shoal-help"), "{listed}");
    let pages = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(pages, listed.lines().count());
    assert!(pages >= 25, "{pages} pages");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn completions_for_each_shell_name_the_subcommands() {
    for (shell, marker) in [
        ("bash", "complete -F _shoal"),
        ("zsh", "#compdef shoal"),
        ("fish", "complete -c shoal"),
    ] {
        let out = shoal().args(["completions", shell]).output().unwrap();
        assert!(out.status.success(), "{shell}: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(text.contains(marker), "{shell}: {text}");
        for word in ["cleanup", "queryport", "drainstop"] {
            assert!(text.contains(word), "{shell} lacks {word}");
        }
    }
    let out = shoal().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}

/// `shoal cleanup` of `lo` in a namespace of its own (`unshare -n`: no
/// name, so no clash with the lab's) logs a line, which shows the format.
fn cleanup_log(format: &str, journal: bool) -> String {
    let dir = scratch(&format!("log-{format}-{journal}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("shoal.toml");
    std::fs::write(
        &config,
        "[cluster]\nvips = [\"10.0.0.100\"]\nkey_file = \"k\"\n\n[[host]]\nid = 1\n\
         interface = \"lo\"\ndedicated = [\"10.0.0.1/24\"]\n",
    )
    .unwrap();
    let mut cmd = Command::new("unshare");
    cmd.arg("-n")
        .arg(env!("CARGO_BIN_EXE_shoal"))
        .args(["--log-format", format, "cleanup", "--config"])
        .arg(&config)
        .arg("--admin-socket")
        .arg(dir.join("host1.sock"))
        .env("RUST_LOG", "debug");
    if journal {
        cmd.env("JOURNAL_STREAM", "8:1234");
    } else {
        cmd.env_remove("JOURNAL_STREAM");
    }
    let out = cmd.output().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("host 1 on lo: nothing was left"),
        "{out:?}"
    );
    String::from_utf8(out.stderr).unwrap()
}

#[test]
fn log_format_json_and_the_journal() {
    let json = cleanup_log("json", false);
    let line = json
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no log: {json:?}"));
    let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert!(v["timestamp"].is_string(), "{v}");
    assert!(v["level"].is_string(), "{v}");
    let journal = cleanup_log("json", true);
    let line = journal.lines().next().unwrap();
    let v: serde_json::Value = serde_json::from_str(line).unwrap();
    assert!(v.get("timestamp").is_none(), "{v}");
    let text = cleanup_log("text", true);
    let first = text.lines().next().unwrap();
    assert!(!first.as_bytes()[0].is_ascii_digit(), "{first}");
}
