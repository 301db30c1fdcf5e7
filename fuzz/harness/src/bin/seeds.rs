//! Builds the seed corpora of shoal's fuzz targets.
//!
//! ```text
//! seeds OUT_DIR [--tcpdump DIR] [--configs DIR] [TARGET...]
//! ```
//!
//! Writes into `OUT_DIR/TARGET/` (libFuzzer's corpus directories), for each
//! TARGET named (default: every target that has seeds):
//!
//! - `classify`: every Ethernet frame of every capture in the tcpdump
//!   directory (read with the dataplane's own pcap reader), plus frames
//!   addressed to the fuzzed cluster;
//! - `config`: every `*.toml` in the configs directory;
//! - `pcap`: every capture in the tcpdump directory up to 16 KiB, plus
//!   synthesized pcapng files;
//! - `head`, `h1`, `member`, `mux` and `sticky`: the synthesized inputs of their harness modules.
//!
//! A target without seeds is reported and skipped, so new targets need no
//! change here until they have seeds. Exit status 2 on bad usage, 1 when a
//! directory cannot be read or written.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use shoal_dataplane::pcap::{frames, LINKTYPE_ETHERNET};
use shoal_fuzz_harness::seeds::{capture_files, cluster_frames, Corpus};

/// Largest capture copied whole into the `pcap` corpus: bigger inputs slow
/// every libFuzzer execution for little new coverage.
const MAX_PCAP_SEED: usize = 16 * 1024;

const TARGETS_WITH_SEEDS: [&str; 8] = [
    "classify", "config", "pcap", "head", "h1", "member", "mux", "sticky",
];

struct Args {
    out: PathBuf,
    tcpdump: Option<PathBuf>,
    configs: Option<PathBuf>,
    targets: Vec<String>,
}

fn usage() -> ExitCode {
    eprintln!("usage: seeds OUT_DIR [--tcpdump DIR] [--configs DIR] [TARGET...]");
    ExitCode::from(2)
}

fn parse_args() -> Option<Args> {
    let mut args = std::env::args_os().skip(1);
    let out = PathBuf::from(args.next()?);
    let mut parsed = Args {
        out,
        tcpdump: None,
        configs: None,
        targets: Vec::new(),
    };
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--tcpdump") => parsed.tcpdump = Some(PathBuf::from(args.next()?)),
            Some("--configs") => parsed.configs = Some(PathBuf::from(args.next()?)),
            Some(t) if !t.starts_with('-') => parsed.targets.push(t.to_owned()),
            _ => return None,
        }
    }
    if parsed.targets.is_empty() {
        parsed.targets = TARGETS_WITH_SEEDS.iter().map(|t| (*t).to_owned()).collect();
    }
    Some(parsed)
}

/// The files of `dir` (sorted, so runs are reproducible), with extension
/// `ext` when given.
fn files(dir: &Path, ext: Option<&str>) -> Result<Vec<PathBuf>, String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| ext.is_none_or(|x| p.extension().is_some_and(|e| e == x)))
        .collect();
    out.sort();
    Ok(out)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn seed_classify(corpus: &mut Corpus, tcpdump: Option<&Path>) -> Result<String, String> {
    let mut captures = 0;
    let mut frames_read = 0;
    let mut not_ethernet = 0;
    let mut unreadable = 0;
    if let Some(dir) = tcpdump {
        for path in files(dir, None)? {
            let file = read(&path)?;
            let Ok(items) = frames(&file) else {
                unreadable += 1;
                continue;
            };
            captures += 1;
            // A capture cut short still yields the frames before the cut.
            for frame in items.map_while(Result::ok) {
                if frame.link_type != LINKTYPE_ETHERNET {
                    not_ethernet += 1;
                    continue;
                }
                frames_read += 1;
                corpus.add(frame.data).map_err(|e| e.to_string())?;
            }
        }
    }
    for frame in cluster_frames() {
        corpus.add(&frame).map_err(|e| e.to_string())?;
    }
    Ok(format!(
        "{frames_read} frames from {captures} captures ({not_ethernet} not Ethernet, \
         {unreadable} files unreadable) + cluster frames"
    ))
}

fn seed_config(corpus: &mut Corpus, configs: Option<&Path>) -> Result<String, String> {
    let mut n = 0;
    if let Some(dir) = configs {
        for path in files(dir, Some("toml"))? {
            corpus.add(&read(&path)?).map_err(|e| e.to_string())?;
            n += 1;
        }
    }
    Ok(format!("{n} example configs"))
}

fn seed_pcap(corpus: &mut Corpus, tcpdump: Option<&Path>) -> Result<String, String> {
    let mut n = 0;
    if let Some(dir) = tcpdump {
        for path in files(dir, None)? {
            let file = read(&path)?;
            if file.len() <= MAX_PCAP_SEED {
                corpus.add(&file).map_err(|e| e.to_string())?;
                n += 1;
            }
        }
    }
    let frames = cluster_frames();
    let refs: Vec<&[u8]> = frames.iter().take(24).map(Vec::as_slice).collect();
    for file in capture_files(&refs) {
        corpus.add(&file).map_err(|e| e.to_string())?;
    }
    Ok(format!(
        "{n} captures up to {MAX_PCAP_SEED} bytes + synthesized pcapng"
    ))
}

fn seed_synthesized(corpus: &mut Corpus, inputs: Vec<Vec<u8>>) -> Result<String, String> {
    for input in &inputs {
        corpus.add(input).map_err(|e| e.to_string())?;
    }
    Ok(format!("{} synthesized inputs", inputs.len()))
}

fn run(args: &Args) -> Result<(), String> {
    for target in &args.targets {
        if !TARGETS_WITH_SEEDS.contains(&target.as_str()) {
            println!("seeds {target}: none (starts from an empty corpus)");
            continue;
        }
        let dir = args.out.join(target);
        let mut corpus = Corpus::open(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let what = match target.as_str() {
            "classify" => seed_classify(&mut corpus, args.tcpdump.as_deref())?,
            "config" => seed_config(&mut corpus, args.configs.as_deref())?,
            "head" => seed_synthesized(&mut corpus, shoal_fuzz_harness::head::seeds())?,
            "h1" => seed_synthesized(&mut corpus, shoal_fuzz_harness::h1::seeds())?,
            "member" => seed_synthesized(&mut corpus, shoal_fuzz_harness::member::seeds())?,
            "mux" => seed_synthesized(&mut corpus, shoal_fuzz_harness::mux::seeds())?,
            "sticky" => seed_synthesized(&mut corpus, shoal_fuzz_harness::sticky::seeds())?,
            _ => seed_pcap(&mut corpus, args.tcpdump.as_deref())?,
        };
        println!(
            "seeds {target}: {} distinct inputs, {} new, {} already present ({what})",
            corpus.distinct(),
            corpus.written(),
            corpus.present()
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let Some(args) = parse_args() else {
        return usage();
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("seeds: {e}");
            ExitCode::FAILURE
        }
    }
}
