//! Where the external programs the engine runs (`ip`, `nft`) are found:
//! in a fixed list of system directories, never through `PATH`, so that
//! whoever sets the engine's environment cannot choose what it runs as
//! root.
//!
//! Guarantees: [`resolve`] returns an absolute path to a regular,
//! executable file named `program` in the first of [`SYSTEM_DIRS`] that has
//! one, or `NotFound` naming the directories searched; `program` must be a
//! bare name (no `/`). [`command`] builds a `Command` for it whose child
//! sees `PATH` = those directories.
#![forbid(unsafe_code)]

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The directories searched, in order.
pub const SYSTEM_DIRS: [&str; 4] = ["/usr/sbin", "/usr/bin", "/sbin", "/bin"];

/// `program`'s absolute path in the first of `dirs` that holds it as an
/// executable regular file.
pub fn resolve_in(program: &str, dirs: &[&str]) -> io::Result<PathBuf> {
    if program.is_empty() || program.contains('/') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{program:?} is not a bare program name"),
        ));
    }
    for dir in dirs {
        let path = Path::new(dir).join(program);
        if let Ok(meta) = std::fs::metadata(&path) {
            if meta.is_file() && meta.permissions().mode() & 0o111 != 0 {
                return Ok(path);
            }
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{program} is in none of {}", dirs.join(", ")),
    ))
}

/// [`resolve_in`] over [`SYSTEM_DIRS`].
pub fn resolve(program: &str) -> io::Result<PathBuf> {
    resolve_in(program, &SYSTEM_DIRS)
}

/// A `Command` for `program` found by [`resolve`], its child's `PATH` set
/// to [`SYSTEM_DIRS`].
pub fn command(program: &str) -> io::Result<Command> {
    let mut cmd = Command::new(resolve(program)?);
    cmd.env("PATH", SYSTEM_DIRS.join(":"));
    Ok(cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fake_program_on_path_is_never_taken() {
        let dir = std::env::temp_dir().join(format!("shoal-programs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("nft");
        std::fs::write(&fake, "#!/bin/sh\necho fake\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let old = std::env::var_os("PATH");
        // A PATH that names only the fake's directory.
        std::env::set_var("PATH", &dir);
        let found = resolve("nft");
        let sh = command("sh").map(|c| c.get_program().to_owned());
        // What host setup runs for `nft` is not the fake either.
        let ran = crate::sys::host::HostOps::run(
            &mut crate::sys::host::Kernel,
            "nft",
            &["--version"],
            None,
        );
        match old {
            Some(p) => std::env::set_var("PATH", p),
            None => std::env::remove_var("PATH"),
        }
        match found {
            Ok(path) => {
                assert!(SYSTEM_DIRS.iter().any(|d| path.starts_with(d)), "{path:?}");
                assert_ne!(path, fake);
            }
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}"),
        }
        match ran {
            Ok(out) => assert!(!out.stdout.contains("fake"), "{out:?}"),
            Err(e) => assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}"),
        }
        let sh = sh.unwrap();
        assert!(Path::new(&sh).is_absolute(), "{sh:?}");
        // In a directory list of its own the fake is found: the search
        // reads the list it is given and nothing else.
        assert_eq!(resolve_in("nft", &[dir.to_str().unwrap()]).unwrap(), fake);
        assert_eq!(
            resolve_in("nft", &["/nonexistent-shoal-dir"])
                .unwrap_err()
                .kind(),
            io::ErrorKind::NotFound
        );
        assert!(resolve_in("../nft", &SYSTEM_DIRS).is_err());
        assert!(resolve_in("/usr/sbin/nft", &SYSTEM_DIRS).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
