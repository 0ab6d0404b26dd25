//! Command-line hygiene shared by every binary.
//!
//! A reader that stops early (`odds-processor --help | head -1`) closes the pipe; that is the
//! reader's choice, not an error. Rust ignores SIGPIPE, so the next write fails with EPIPE,
//! and `println!` would panic on it. Binaries print through [`print_stdout`], which ends
//! quietly instead (as `odds-operator crd` does). clap's own `--help`/`--version` output
//! already swallows write errors.

use std::io::{ErrorKind, Write};

/// Writes `text` to `out` and flushes; a closed reader (EPIPE) is success.
pub fn write_quietly(out: &mut impl Write, text: &str) -> std::io::Result<()> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(error) if error.kind() == ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

/// Prints `text` to standard output; a closed reader (EPIPE) is success.
pub fn print_stdout(text: &str) -> std::io::Result<()> {
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
        assert!(write_quietly(&mut Failing(ErrorKind::BrokenPipe), "x").is_ok());
        assert!(write_quietly(&mut Failing(ErrorKind::PermissionDenied), "x").is_err());
        let mut out = Vec::new();
        write_quietly(&mut out, "text").unwrap_or_default();
        assert_eq!(out, b"text");
    }
}
