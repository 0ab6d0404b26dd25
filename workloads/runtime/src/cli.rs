//! Command-line hygiene shared by every binary.
//!
//! A reader that stops early (`odds-processor --help | head -1`) closes the pipe; that is the
//! reader's choice, not an error. Rust ignores SIGPIPE, so the next write fails with EPIPE,
//! and `println!` would panic on it. Binaries print through [`print_stdout`], which reports
//! the reader's departure instead, so the caller can stop quietly (as `odds-operator crd`
//! does). clap's own `--help`/`--version` output already swallows write errors.

use std::io::{ErrorKind, Write};

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
