//! Configuration errors: where each problem is and what is wrong.
//!
//! Owns: [`ConfigError`] (one problem) and [`ConfigErrors`] (every problem a
//! load found). Guarantees: each error names the file, the 1-based line of the
//! offending key or value when there is one, the key path in the form
//! `section.key`, `host[2].cores.poll[1].core` or `rule[3].weights.2` (array
//! positions are 1-based, counted in file order, like lines), and a reason
//! that states the accepted values. `Display` writes `FILE:LINE: KEY: REASON`
//! (or `FILE: KEY: REASON` when no line applies), one error per line, the
//! format editors and `grep` already understand.

use std::fmt;
use std::path::{Path, PathBuf};

/// One problem in a configuration file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// 1-based line of the offending key or value; `None` when the problem
    /// has no line (the file cannot be read, a whole section is missing, the
    /// key file does not exist).
    pub line: Option<usize>,
    /// Key path, e.g. `heartbeat.period_ms`, `rule[2].ports`, `host[1].id`;
    /// `syntax` for TOML syntax errors, `file` for I/O errors.
    pub key: String,
    /// What is wrong, including the accepted values.
    pub reason: String,
}

impl ConfigError {
    /// An error at `line` (1-based) of `file`.
    pub fn new(
        file: &Path,
        line: Option<usize>,
        key: impl Into<String>,
        reason: impl Into<String>,
    ) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(
                f,
                "{}:{}: {}: {}",
                self.file.display(),
                line,
                self.key,
                self.reason
            ),
            None => write!(f, "{}: {}: {}", self.file.display(), self.key, self.reason),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one configuration file, in the order found (which
/// follows the file, then cross-checks between sections).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl ConfigErrors {
    /// The individual errors.
    pub fn errors(&self) -> &[ConfigError] {
        &self.0
    }

    /// Number of errors.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (a load never returns an empty set).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Iterates over the errors.
    pub fn iter(&self) -> std::slice::Iter<'_, ConfigError> {
        self.0.iter()
    }
}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl<'a> IntoIterator for &'a ConfigErrors {
    type Item = &'a ConfigError;
    type IntoIter = std::slice::Iter<'a, ConfigError>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Collects errors against one source text, turning byte spans into lines.
#[derive(Debug)]
pub(crate) struct Diagnostics<'a> {
    file: &'a Path,
    /// Byte offset at which each line starts.
    line_starts: Vec<usize>,
    errors: Vec<ConfigError>,
}

impl<'a> Diagnostics<'a> {
    pub(crate) fn new(file: &'a Path, text: &str) -> Self {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Self {
            file,
            line_starts,
            errors: Vec::new(),
        }
    }

    /// 1-based line holding byte `offset`.
    pub(crate) fn line(&self, offset: usize) -> usize {
        self.line_starts.partition_point(|&start| start <= offset)
    }

    /// Records an error at the span starting at byte `offset`.
    pub(crate) fn at(&mut self, offset: usize, key: impl Into<String>, reason: impl Into<String>) {
        let line = self.line(offset);
        self.errors
            .push(ConfigError::new(self.file, Some(line), key, reason));
    }

    /// Records an error that has no line.
    pub(crate) fn unplaced(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.errors
            .push(ConfigError::new(self.file, None, key, reason));
    }

    pub(crate) fn len(&self) -> usize {
        self.errors.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub(crate) fn into_errors(self) -> ConfigErrors {
        ConfigErrors(self.errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_one_based() {
        let d = Diagnostics::new(Path::new("x"), "a\nbb\n\nc");
        assert_eq!(d.line(0), 1);
        assert_eq!(d.line(1), 1);
        assert_eq!(d.line(2), 2);
        assert_eq!(d.line(5), 3);
        assert_eq!(d.line(6), 4);
    }

    #[test]
    fn display_is_file_line_key_reason() {
        let e = ConfigError::new(Path::new("c.toml"), Some(3), "io.ring_size", "bad");
        assert_eq!(e.to_string(), "c.toml:3: io.ring_size: bad");
        let e = ConfigError::new(Path::new("c.toml"), None, "host", "missing");
        assert_eq!(e.to_string(), "c.toml: host: missing");
        let all = ConfigErrors(vec![e.clone(), e]);
        assert_eq!(all.to_string().lines().count(), 2);
    }
}
