//! What every binary's `main` shares: its start-up and command-line hygiene.
//!
//! A stage's process starts the same way everywhere ([`StageProcess`]): logging and trace
//! export from its [`OpsArgs`], a shutdown token cancelled on SIGTERM, and the traces
//! flushed before `main` returns its outcome (and with it the exit code). Options given in
//! milliseconds are parsed one way ([`millis`]) into one type ([`Millis`]).
//!
//! A reader that stops early (`odds-processor --help | head -1`) closes the pipe; that is the
//! reader's choice, not an error. Rust ignores SIGPIPE, so the next write fails with EPIPE,
//! and `println!` would panic on it. Binaries print through [`print_stdout`], which reports
//! the reader's departure instead, so the caller can stop quietly (as `odds-operator crd`
//! does). clap's own `--help`/`--version` output already swallows write errors.

use crate::otel::TracingGuard;
use crate::{OpsArgs, RuntimeError};
use clap::builder::TypedValueParser;
use std::io::{ErrorKind, Write};
use std::ops::RangeInclusive;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A duration set as a whole number of milliseconds: the value of every `--*-ms` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Millis(pub u64);

impl Millis {
    pub fn duration(self) -> Duration {
        Duration::from_millis(self.0)
    }
}

/// The number, as `--help` shows a default.
impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The value parser of a `--*-ms` option: milliseconds in `range`. A value outside it is an
/// error naming the flag, never clamped.
pub fn millis(range: RangeInclusive<u64>) -> impl TypedValueParser<Value = Millis> {
    clap::value_parser!(u64).range(range).map(Millis)
}

/// A stage binary's process, set up: logging and (when `OTEL_*` asks for it) trace export
/// running, and a token that SIGTERM or SIGINT cancels.
pub struct StageProcess {
    traces: TracingGuard,
    /// Cancelled on SIGTERM or SIGINT; hand it to the stage.
    pub shutdown: CancellationToken,
}

impl StageProcess {
    /// Starts logging and trace export as `ops` says, with `service` as the default service
    /// name of the traces, and listens for the stop signals. Must run inside the Tokio runtime.
    pub fn start(service: &'static str, ops: &OpsArgs) -> Result<StageProcess, RuntimeError> {
        let traces = crate::telemetry::init_with_tracing(ops.log_format, &ops.log_filter, service)?;
        Ok(StageProcess {
            traces,
            shutdown: crate::shutdown::on_signals(),
        })
    }

    /// Flushes the traces, then hands back the stage's `outcome` for `main` to return.
    pub async fn finish<T>(self, outcome: T) -> T {
        self.traces.shutdown().await;
        outcome
    }
}

/// Writes `text` to `out` and flushes. `Ok(false)` when the reader has gone (EPIPE): not an
/// error, but nothing more will be read, so the caller should stop writing.
pub fn write_quietly(out: &mut impl Write, text: &str) -> std::io::Result<bool> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(true),
        Err(error) if error.kind() == ErrorKind::BrokenPipe => Ok(false),
        Err(error) => Err(error),
    }
}

/// The flag of [`crate::OpsArgs::print_metric_families`].
pub const PRINT_METRIC_FAMILIES: &str = "--print-metric-families";

/// Whether the command line asks for the metric families only. Read from the raw arguments
/// before clap parses them, as `--version` is, because a stage's required settings (brokers,
/// database) mean nothing to a command that starts nothing.
pub fn metric_families_requested() -> bool {
    std::env::args_os()
        .skip(1)
        .any(|arg| arg == PRINT_METRIC_FAMILIES)
}

/// Prints `text` to standard output; `Ok(false)` when the reader has gone (EPIPE).
pub fn print_stdout(text: &str) -> std::io::Result<bool> {
    write_quietly(&mut std::io::stdout().lock(), text)
}

#[cfg(test)]
mod tests {
    use super::write_quietly;
    use std::io::{Error, ErrorKind, Write};

    struct Failing(ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(Error::from(self.0))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_reader_is_success_other_errors_are_not() {
        assert_eq!(
            write_quietly(&mut Failing(ErrorKind::BrokenPipe), "x").ok(),
            Some(false)
        );
        assert!(write_quietly(&mut Failing(ErrorKind::PermissionDenied), "x").is_err());
        let mut out = Vec::new();
        assert_eq!(write_quietly(&mut out, "text").ok(), Some(true));
        assert_eq!(out, b"text");
    }
}
