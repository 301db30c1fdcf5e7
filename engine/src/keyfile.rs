//! The cluster key file on disk: reading it for `shoal run` (which refuses
//! an unfit file), for the offline tools (which take any key), for
//! `shoal config check` (which warns), and writing a fresh one
//! (`shoal keygen`).
//!
//! Guarantees:
//! - [`for_run`] returns a key only from a regular file that root owns, that
//!   group and others cannot access, and that does not hold the sample key
//!   published in `config/examples/`; the metadata checked and the text read
//!   come from one open file, so a file swapped in between is not taken.
//!   Its error names the file, every problem and how to make a good key.
//! - [`keygen`] writes 32 bytes from the kernel's random source, in the
//!   format `shoal_config::parse_cluster_key` reads, to a file that has mode
//!   0600 from the moment it exists; it never replaces an existing file
//!   unless told to, and then atomically (a fresh file renamed over it).
#![forbid(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use shoal_config::{
    format_cluster_key, key_file_problems, parse_cluster_key, ClusterKey, Config, KeyFileProblem,
    CLUSTER_KEY_LEN,
};

/// A key file's key and its problems for a running host.
struct KeyFile {
    key: ClusterKey,
    problems: Vec<KeyFileProblem>,
}

fn read(path: &Path) -> Result<KeyFile> {
    let mut file =
        File::open(path).with_context(|| format!("reading the cluster key {}", path.display()))?;
    let meta = file
        .metadata()
        .with_context(|| format!("reading the cluster key {}", path.display()))?;
    if !meta.is_file() {
        bail!("cluster key {}: not a regular file", path.display());
    }
    // A key file is one line of text; anything much larger is not one.
    let mut text = String::new();
    (&mut file)
        .take(64 * 1024)
        .read_to_string(&mut text)
        .with_context(|| format!("reading the cluster key {}", path.display()))?;
    let key =
        parse_cluster_key(&text).map_err(|e| anyhow!("cluster key {}: {e}", path.display()))?;
    let problems = key_file_problems(meta.mode(), meta.uid(), &key);
    Ok(KeyFile { key, problems })
}

/// How to make a good key file at `path`.
fn remedy(path: &Path) -> String {
    format!(
        "`shoal keygen --force {}` makes a fresh key file (mode 0600, owned by root) to copy \
         to every host",
        path.display()
    )
}

/// The cluster key of `config`, for a running host: refused, with every
/// problem and the remedy, when the file is unfit (see the module docs).
pub fn for_run(config: &Config) -> Result<ClusterKey> {
    let path = config.key_path();
    let r = read(&path)?;
    if r.problems.is_empty() {
        return Ok(r.key);
    }
    let problems: Vec<String> = r.problems.iter().map(ToString::to_string).collect();
    bail!(
        "refusing the cluster key {}: {}. {}",
        path.display(),
        problems.join("; "),
        remedy(&path)
    )
}

/// The cluster key of `config`, for an offline tool (any readable key).
pub fn for_tools(config: &Config) -> Result<ClusterKey> {
    let path = config.key_path();
    read(&path)
        .map(|r| r.key)
        .context("the bucket hash is seeded from the cluster key, so this tool needs to read it")
}

/// What `shoal config check` says about `config`'s key file: one line per
/// problem a running host would refuse it for (or why it cannot be read).
pub fn warnings(config: &Config) -> Vec<String> {
    let path = config.key_path();
    match read(&path) {
        Ok(r) if r.problems.is_empty() => Vec::new(),
        Ok(r) => r
            .problems
            .iter()
            .map(|p| format!("cluster key {}: {p}", path.display()))
            .chain([format!(
                "`shoal run` refuses this key file; {}",
                remedy(&path)
            )])
            .collect(),
        Err(e) => vec![format!("{e:#}")],
    }
}

/// `shoal keygen FILE`: writes a fresh random key to `path` with mode 0600
/// (see the module docs); `force` replaces an existing file.
pub fn keygen(path: &Path, force: bool) -> Result<()> {
    let mut bytes = [0u8; CLUSTER_KEY_LEN];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("reading /dev/urandom")?;
    let text = format_cluster_key(&ClusterKey::from_bytes(bytes));
    if !force {
        return write_new(path, &text).map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                anyhow!(
                    "{} exists; keep it, or replace it with `shoal keygen --force {}`",
                    path.display(),
                    path.display()
                )
            } else {
                anyhow!("writing {}: {e}", path.display())
            }
        });
    }
    let tmp = sibling(path, &format!(".keygen-{}", std::process::id()));
    let written = write_new(&tmp, &text)
        .and_then(|()| std::fs::rename(&tmp, path))
        .with_context(|| format!("writing {}", path.display()));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Creates `path` (which must not exist) with mode 0600 and writes `text`.
fn write_new(path: &Path, text: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// `path` with `suffix` appended to its file name.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("shoal-keyfile-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn keygen_writes_a_private_fresh_key_and_keeps_an_existing_file() {
        let d = dir("keygen");
        let path = d.join("cluster.key");
        keygen(&path, false).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let first = parse_cluster_key(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(!first.is_published_example());
        let err = keygen(&path, false).unwrap_err().to_string();
        assert!(err.contains("--force"), "{err}");
        assert_eq!(
            parse_cluster_key(&std::fs::read_to_string(&path).unwrap()).unwrap(),
            first
        );
        // A file group or others could read is replaced by a private one.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        keygen(&path, true).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = parse_cluster_key(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_ne!(first, second);
        assert_eq!(
            std::fs::read_dir(&d).unwrap().count(),
            1,
            "no temporary left"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
