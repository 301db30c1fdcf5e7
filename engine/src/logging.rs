//! The engine's log output: one line per event on standard error, as text
//! or as JSON (`--log-format text|json`), levels from `RUST_LOG` (default
//! `info`).
//!
//! Under systemd (`JOURNAL_STREAM` set: standard error is a journal stream)
//! lines carry no timestamp of their own: the journal stamps every line it
//! receives, and a second clock in the text only disagrees with it. Colour
//! is used only when standard error is a terminal.
#![forbid(unsafe_code)]

use std::io::IsTerminal;

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines: `TIME LEVEL target: message key=value ...`.
    #[default]
    Text,
    /// One JSON object per line: `timestamp` (omitted under systemd),
    /// `level`, `target`, `fields` (with `message`).
    Json,
}

/// Where the log goes and what decorates it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogStyle {
    /// Text or JSON.
    pub format: LogFormat,
    /// Leave timestamps to the journal.
    pub journal: bool,
    /// Colour the text (standard error is a terminal).
    pub ansi: bool,
}

impl LogStyle {
    /// The style for this process: `format`, journal mode when
    /// `JOURNAL_STREAM` is set, colour when standard error is a terminal.
    pub fn detect(format: LogFormat) -> Self {
        Self {
            format,
            journal: std::env::var_os("JOURNAL_STREAM").is_some_and(|v| !v.is_empty()),
            ansi: std::io::stderr().is_terminal(),
        }
    }
}

/// A subscriber writing `style`'s lines to `writer`, filtered by `filter`.
pub fn subscriber<W>(
    style: LogStyle,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match (style.format, style.journal) {
        (LogFormat::Text, false) => Box::new(builder.with_ansi(style.ansi).finish()),
        (LogFormat::Text, true) => Box::new(builder.with_ansi(false).without_time().finish()),
        (LogFormat::Json, false) => Box::new(builder.json().finish()),
        (LogFormat::Json, true) => Box::new(builder.json().without_time().finish()),
    }
}

/// The filter from `RUST_LOG`, `info` when unset or unreadable.
pub fn env_filter() -> EnvFilter {
    EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Installs the process-wide subscriber (once; later calls do nothing).
pub fn init(format: LogFormat) {
    let sub = subscriber(LogStyle::detect(format), env_filter(), std::io::stderr);
    let _ = tracing::subscriber::set_global_default(sub);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Buffer {
        type Writer = Buffer;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    fn emit(format: LogFormat, journal: bool, filter: &str) -> String {
        let buf = Buffer::default();
        let style = LogStyle {
            format,
            journal,
            ansi: false,
        };
        let sub = subscriber(style, EnvFilter::new(filter), buf.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(host = 2, "shoal running");
            tracing::debug!("hidden at info");
        });
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn json_lines_parse_and_carry_the_fields() {
        let out = emit(LogFormat::Json, false, "info");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["fields"]["message"], "shoal running");
        assert_eq!(v["fields"]["host"], 2);
        assert!(v.get("timestamp").is_some(), "{v}");
    }

    #[test]
    fn under_the_journal_no_timestamp_is_written() {
        let v: serde_json::Value =
            serde_json::from_str(emit(LogFormat::Json, true, "info").trim()).unwrap();
        assert!(v.get("timestamp").is_none(), "{v}");
        let text = emit(LogFormat::Text, true, "info");
        assert!(
            text.starts_with(" INFO") || text.starts_with("INFO"),
            "{text:?}"
        );
        // A text line outside the journal starts with its timestamp.
        let stamped = emit(LogFormat::Text, false, "info");
        assert!(stamped.as_bytes()[0].is_ascii_digit(), "{stamped:?}");
    }

    #[test]
    fn the_filter_sets_the_level() {
        assert_eq!(emit(LogFormat::Text, false, "debug").lines().count(), 2);
        assert_eq!(emit(LogFormat::Text, false, "warn").lines().count(), 0);
    }
}
