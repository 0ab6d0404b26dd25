//! CPU time from Linux' /proc: per process, and for the whole machine.
//!
//! The benchmark runs everything on one machine, so a latency figure means little without
//! knowing who used the CPU meanwhile: each stage, the benchmark itself (its clients and the
//! hosted Kafka mock broker), and how much of the machine stayed idle. Parsing is kept apart
//! from reading so it can be tested on fixed text.

/// Clock ticks per second of /proc's CPU times (`USER_HZ`); 100 on every Linux this runs on.
const USER_HZ: f64 = 100.0;

/// User + system CPU seconds of a process so far (all its threads), from the text of
/// `/proc/<pid>/stat`.
pub fn parse_process_cpu_seconds(stat: &str) -> Option<f64> {
    // Fields after the command name (which may contain spaces and parentheses) start at ") ".
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / USER_HZ)
}

/// CPU seconds of process `pid` so far; `None` once it has gone.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    parse_process_cpu_seconds(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// CPU seconds of this process so far: the benchmark's clients and, when hosted here, the
/// Kafka mock broker (librdkafka threads are threads of this process).
pub fn own_cpu_seconds() -> Option<f64> {
    parse_process_cpu_seconds(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// The machine's CPU ticks, summed over all cores: all of them, and the idle ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    pub total: u64,
    pub idle: u64,
}

/// The `cpu` line of `/proc/stat`: user nice system idle iowait irq softirq steal guest
/// guest_nice. Idle is idle + iowait (a core waiting for the disk could run something else);
/// guest time is already inside user time, so it is not added again.
pub fn parse_machine_ticks(proc_stat: &str) -> Option<MachineTicks> {
    let line = proc_stat.lines().find(|l| l.starts_with("cpu "))?;
    let values: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
    let total = values.iter().take(8).sum();
    Some(MachineTicks { total, idle })
}

pub fn machine_ticks() -> Option<MachineTicks> {
    parse_machine_ticks(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// The share (0..1) of the machine's CPU time that was idle between two readings.
pub fn idle_share(before: MachineTicks, after: MachineTicks) -> Option<f64> {
    let total = after.total.checked_sub(before.total)?;
    let idle = after.idle.checked_sub(before.idle)?;
    (total > 0).then(|| idle as f64 / total as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_cpu_is_user_plus_system_even_with_odd_command_names() {
        let stat = "4242 (odds (x) y) S 1 4242 4242 0 -1 4194304 100 0 0 0 250 130 7 9 20 0 8 0";
        assert_eq!(parse_process_cpu_seconds(stat), Some(3.8));
        assert_eq!(parse_process_cpu_seconds("garbage"), None);
    }

    #[test]
    fn idle_share_counts_iowait_as_idle_and_steal_as_busy() {
        let before = parse_machine_ticks("cpu  100 0 100 700 100 0 0 0 0 0\ncpu0 1 2 3\n").unwrap();
        assert_eq!(
            before,
            MachineTicks {
                total: 1000,
                idle: 800
            }
        );
        // 400 ticks later: 320 busy (50 of them stolen), 80 idle or waiting on I/O; the
        // guest column is part of user already.
        let after = parse_machine_ticks("cpu  320 0 150 760 120 0 0 50 40 0\n").unwrap();
        assert_eq!(idle_share(before, after), Some(0.2));
        assert_eq!(idle_share(after, before), None);
        assert_eq!(idle_share(before, before), None);
        assert_eq!(parse_machine_ticks("intr 1 2 3\n"), None);
    }
}
