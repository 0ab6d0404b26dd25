//! What the fan-out tools (`ws-load`, `loopback-floor`) share: the load they put on a
//! fan-out, parsed from the same flags, so their figures can be laid side by side (their CPU
//! counters come from `odds_testkit::usage`, as the pipeline benchmark's do).

use anyhow::{bail, Context, Result};

/// How many clients follow how many events (client `i` follows event `i % events`), and how
/// fast updates are published, for how long.
pub struct Load {
    pub clients: usize,
    pub events: usize,
    pub rate: u64,
    pub seconds: u64,
}

impl Load {
    /// The fan-out comparison's load a: each client follows a busy event (200 updates a
    /// second), so a pub/sub batch holds several frames for the same socket.
    #[allow(dead_code)] // each tool starts from one of the two loads
    pub const A: Load = Load {
        clients: 1000,
        events: 25,
        rate: 5000,
        seconds: 15,
    };

    /// Load e: each client's event changes 10 times a second, so most writes carry one
    /// frame (the per-delivery cost with little to batch).
    #[allow(dead_code)]
    pub const E: Load = Load {
        clients: 1000,
        events: 100,
        rate: 1000,
        seconds: 15,
    };

    /// Reads the command line over these defaults: `--clients`, `--events`, `--rate` and
    /// `--seconds` here, any other flag through `other`, which takes the flag and a source of
    /// its value and says whether it knew the flag. `--bench`, which cargo passes to every
    /// harness-less bench, is ignored; an unknown flag is an error.
    pub fn parse(
        mut self,
        mut other: impl FnMut(&str, &mut dyn FnMut() -> Result<String>) -> Result<bool>,
    ) -> Result<Load> {
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().context("missing value");
            match flag.as_str() {
                "--clients" => self.clients = value()?.parse()?,
                "--events" => self.events = value()?.parse()?,
                "--rate" => self.rate = value()?.parse()?,
                "--seconds" => self.seconds = value()?.parse()?,
                "--bench" => {}
                flag => {
                    if !other(flag, &mut value)? {
                        bail!("unknown argument {flag}");
                    }
                }
            }
        }
        if self.clients == 0 || self.events == 0 || self.rate == 0 {
            bail!("--clients, --events and --rate must be positive");
        }
        Ok(self)
    }
}
