//! Replays inputs through a fuzz target's check without libFuzzer: to
//! reproduce a crash on plain stable (under a debugger if need be), or to
//! see what a corpus reaches.
//!
//! ```text
//! replay TARGET PATH...
//! ```
//!
//! Each PATH is an input file or a directory of them (read in name order).
//! Inputs run in order through one process, so `classify`'s cluster state
//! carries from one to the next exactly as it does under libFuzzer. For
//! `classify` it prints how many inputs got each combination of verdicts;
//! for the others, how many inputs ran. A broken invariant panics, as under
//! libFuzzer. Exit status 2 on bad usage, 1 when a path cannot be read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use shoal_fuzz_harness::classify::Segment;
use shoal_fuzz_harness::{config, head, member, pcap, route, sticky};

fn inputs(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    if path.is_dir() {
        let entries = std::fs::read_dir(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect();
        files.sort();
        out.extend(files);
    } else {
        out.push(path.to_path_buf());
    }
    Ok(())
}

fn run(target: &str, paths: &[PathBuf]) -> Result<(), String> {
    let mut files = Vec::new();
    for p in paths {
        inputs(p, &mut files)?;
    }
    let mut segment = (target == "classify").then(Segment::new);
    let mut tally: BTreeMap<String, usize> = BTreeMap::new();
    for file in &files {
        let input = std::fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        match target {
            "classify" => {
                if let Some(segment) = segment.as_mut() {
                    let verdicts = segment.check(&input);
                    let kinds: Vec<String> =
                        verdicts.iter().map(|(_, v)| format!("{v:?}")).collect();
                    *tally.entry(kinds.join(" | ")).or_default() += 1;
                }
            }
            "config" => {
                // libFuzzer's `&str` targets skip inputs that are not UTF-8.
                if let Ok(text) = std::str::from_utf8(&input) {
                    config::check(text);
                }
            }
            "pcap" => pcap::check(&input),
            "route" => route::check(&input),
            "head" => head::check(&input),
            "member" => member::check(&input),
            "sticky" => sticky::check(&input),
            _ => return Err(format!("no check for target {target}")),
        }
    }
    println!("{target}: {} inputs replayed", files.len());
    for (kinds, n) in &tally {
        println!("{n:8}  {kinds}");
    }
    Ok(())
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(target) = args.next() else {
        eprintln!("usage: replay TARGET PATH...");
        return ExitCode::from(2);
    };
    let paths: Vec<PathBuf> = args.map(PathBuf::from).collect();
    if paths.is_empty() {
        eprintln!("usage: replay TARGET PATH...");
        return ExitCode::from(2);
    }
    match run(&target, &paths) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("replay: {e}");
            ExitCode::FAILURE
        }
    }
}
