//! CPU time and memory from Linux' /proc: per process, per thread, and for the whole machine.
//!
//! The benchmarks run everything on one machine, so a latency figure means little without
//! knowing who used the CPU meanwhile: each stage, the benchmark itself (its clients and the
//! hosted Kafka mock broker), and how much of the machine stayed idle. `make bench-pipeline`
//! (odds-demo) and the fan-out benches (odds-service's ws-load and loopback-floor) read them
//! here, so both count idle time and ticks the same way. The files are read and parsed by the
//! `procfs` crate (default features off: no chrono or flate2); what is ours is what counts as
//! idle and how ticks become seconds.

use procfs::process::{Process, Schedstat, Stat};
use procfs::{CpuTime, CurrentSI, FromRead, KernelStats};

/// CPU seconds, user and system time apart (the fan-out comparison reports both: the kernel's
/// share is most of a WebSocket server's cost).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CpuSplit {
    pub user: f64,
    pub system: f64,
}

impl CpuSplit {
    pub fn total(&self) -> f64 {
        self.user + self.system
    }

    /// What was used from `before` to `self` (never negative).
    pub fn since(&self, before: &CpuSplit) -> CpuSplit {
        CpuSplit {
            user: (self.user - before.user).max(0.0),
            system: (self.system - before.system).max(0.0),
        }
    }

    fn of(stat: &Stat) -> CpuSplit {
        CpuSplit {
            user: seconds(stat.utime),
            system: seconds(stat.stime),
        }
    }
}

/// CPU ticks as seconds: /proc counts in `USER_HZ`, 100 on every Linux this runs on, asked
/// rather than assumed.
fn seconds(ticks: u64) -> f64 {
    ticks as f64 / procfs::ticks_per_second().max(1) as f64
}

/// User + system CPU seconds of process `pid` so far (all its threads); `None` once it has
/// gone.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    Some(process_cpu_split(pid)?.total())
}

/// [`process_cpu_seconds`], user and system apart.
pub fn process_cpu_split(pid: u32) -> Option<CpuSplit> {
    let stat = Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()?;
    Some(CpuSplit::of(&stat))
}

/// CPU seconds of this process so far: a benchmark's own clients (and publisher), and, when
/// the pipeline benchmark hosts it, the Kafka mock broker (librdkafka threads are threads of
/// this process).
pub fn own_cpu_seconds() -> Option<f64> {
    Some(own_cpu_split()?.total())
}

/// [`own_cpu_seconds`], user and system apart.
pub fn own_cpu_split() -> Option<CpuSplit> {
    Some(CpuSplit::of(&Process::myself().ok()?.stat().ok()?))
}

/// The calling thread's CPU so far: the scheduler's nanoseconds on a core (finer than the
/// ticks), and user and system time apart.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ThreadCpu {
    pub on_cpu_ns: u64,
    pub split: CpuSplit,
}

/// [`ThreadCpu`] of the calling thread; `None` without `/proc/thread-self`.
pub fn thread_cpu() -> Option<ThreadCpu> {
    // Not `Process::new_with_root`: it wants a pid as the directory's name, and
    // `/proc/thread-self` names a thread.
    let schedstat = Schedstat::from_file("/proc/thread-self/schedstat").ok()?;
    let stat = Stat::from_file("/proc/thread-self/stat").ok()?;
    Some(ThreadCpu {
        on_cpu_ns: schedstat.sum_exec_runtime,
        split: CpuSplit::of(&stat),
    })
}

/// One process of a server's tree as /proc shows it: its parent, its own CPU ticks and the
/// ticks of the children it has reaped (`cutime` + `cstime`: a backend that exited still
/// counts, in its parent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessTicks {
    pub pid: u32,
    pub parent: u32,
    pub own: u64,
    pub reaped_children: u64,
}

/// The CPU ticks of server `root` and its direct children, the way Postgres runs: one
/// postmaster whose children are every backend, the checkpointer, the WAL writer, the
/// autovacuum workers... Children that exited are in the root's reaped ticks, so the sum only
/// grows between two readings (a child exiting between them moves from one term to the
/// other). `None` when `root` is not among `processes`.
pub fn tree_ticks(root: u32, processes: &[ProcessTicks]) -> Option<u64> {
    let server = processes.iter().find(|p| p.pid == root)?;
    let children: u64 = processes
        .iter()
        .filter(|p| p.parent == root && p.pid != root)
        .map(|p| p.own)
        .sum();
    Some(server.own + server.reaped_children + children)
}

/// User + system CPU seconds so far of server `root` and its children (see [`tree_ticks`]);
/// `None` once it has gone.
pub fn tree_cpu_seconds(root: u32) -> Option<f64> {
    let processes: Vec<ProcessTicks> = procfs::process::all_processes()
        .ok()?
        .filter_map(|process| {
            let stat = process.ok()?.stat().ok()?;
            Some(ProcessTicks {
                pid: u32::try_from(stat.pid).ok()?,
                parent: u32::try_from(stat.ppid).ok()?,
                own: stat.utime + stat.stime,
                reaped_children: u64::try_from(stat.cutime + stat.cstime).unwrap_or(0),
            })
        })
        .collect();
    Some(seconds(tree_ticks(root, &processes)?))
}

/// The parent of process `pid` when it is named `name` (the kernel's `comm`); `None` when
/// `pid` is not a process of this machine's view or its parent has another name.
pub fn parent_named(pid: u32, name: &str) -> Option<u32> {
    let stat = Process::new(i32::try_from(pid).ok()?).ok()?.stat().ok()?;
    let parent = Process::new(stat.ppid).ok()?.stat().ok()?;
    (parent.comm == name).then_some(u32::try_from(parent.pid).ok()?)
}

/// Resident memory of process `pid` (MiB); `None` once it has gone.
pub fn process_rss_mib(pid: u32) -> Option<f64> {
    Some(process_rss_kib(pid)? as f64 / 1024.0)
}

/// Resident memory of process `pid` (KiB); `None` once it has gone.
pub fn process_rss_kib(pid: u32) -> Option<u64> {
    Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .status()
        .ok()?
        .vmrss
}

/// The machine's CPU ticks, summed over all cores: all of them, and the idle ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MachineTicks {
    pub total: u64,
    pub idle: u64,
}

impl MachineTicks {
    /// From the `cpu` line of `/proc/stat`'s columns user nice system idle iowait irq softirq
    /// steal. Idle is idle + iowait (a core waiting for the disk could run something else);
    /// guest time is already inside user time, so it is not added again.
    pub fn of(cpu: &CpuTime) -> MachineTicks {
        MachineTicks::of_columns([
            cpu.user,
            cpu.nice,
            cpu.system,
            cpu.idle,
            cpu.iowait.unwrap_or(0),
            cpu.irq.unwrap_or(0),
            cpu.softirq.unwrap_or(0),
            cpu.steal.unwrap_or(0),
        ])
    }

    fn of_columns(columns: [u64; 8]) -> MachineTicks {
        MachineTicks {
            total: columns.iter().sum(),
            idle: columns[3] + columns[4],
        }
    }
}

/// The machine's ticks now; `None` without /proc/stat.
pub fn machine_ticks() -> Option<MachineTicks> {
    Some(MachineTicks::of(&KernelStats::current().ok()?.total))
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
    fn cpu_and_memory_of_a_running_process_and_none_of_a_gone_one() {
        // Burn a little CPU so the reading is not a rounding of nothing.
        let spin = std::time::Instant::now();
        while spin.elapsed() < std::time::Duration::from_millis(30) {}
        let own = own_cpu_seconds().unwrap();
        assert!(own > 0.0, "{own}");
        let by_pid = process_cpu_seconds(std::process::id()).unwrap();
        assert!(by_pid >= own, "{by_pid} < {own}");
        assert!(process_rss_mib(std::process::id()).unwrap() > 1.0);
        // Above the kernel's pid_max: no such process.
        assert_eq!(process_cpu_seconds(u32::MAX / 2), None);
        assert_eq!(process_cpu_split(u32::MAX / 2), None);
        assert_eq!(process_rss_mib(u32::MAX / 2), None);
    }

    #[test]
    fn the_calling_threads_cpu_grows_while_it_spins_and_splits_into_user_and_system() {
        // Spin until the scheduler has counted 50 ms on a core for this thread, however long a
        // loaded machine makes that take (a wall-clock spin may get far less).
        let before = thread_cpu().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let after = loop {
            let now = thread_cpu().unwrap();
            if now.on_cpu_ns >= before.on_cpu_ns + 50_000_000 {
                break now;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{before:?} -> {now:?}"
            );
        };
        // The kernel splits the thread's precise run time into user and system by its ticks
        // and reports both in USER_HZ ticks: 50 ms is at least 4 ticks at 100 Hz, so the
        // split's total grew even after rounding down at both readings.
        let used = after.split.since(&before.split);
        assert!(used.total() > 0.0, "{before:?} -> {after:?}");
        // The thread is part of the process: the process has used at least as much, give or
        // take the rounding of each reading's user and system time down to a tick.
        let tick = 1.0 / procfs::ticks_per_second().max(1) as f64;
        let own = own_cpu_split().unwrap();
        assert!(
            own.total() + 2.0 * tick >= after.split.total(),
            "{own:?} < {after:?}"
        );
        assert!(process_rss_kib(std::process::id()).unwrap() > 1024);
    }

    #[test]
    fn a_split_since_an_earlier_one_is_what_was_used_and_never_negative() {
        let before = CpuSplit {
            user: 1.5,
            system: 2.0,
        };
        let after = CpuSplit {
            user: 2.0,
            system: 2.25,
        };
        assert_eq!(
            after.since(&before),
            CpuSplit {
                user: 0.5,
                system: 0.25
            }
        );
        assert_eq!(after.since(&before).total(), 0.75);
        assert_eq!(before.since(&after).total(), 0.0);
    }

    #[test]
    fn a_server_tree_is_the_server_its_reaped_and_its_live_children() {
        let process = |pid, parent, own, reaped_children| ProcessTicks {
            pid,
            parent,
            own,
            reaped_children,
        };
        let processes = [
            process(1, 0, 5, 1000),
            // The postmaster, 40 ticks reaped from backends that exited.
            process(100, 1, 7, 40),
            process(101, 100, 300, 0),
            process(102, 100, 20, 0),
            // A grandchild (a backend's own child) is in its parent's reaped ticks, not here.
            process(103, 101, 9, 0),
            // Another server on the machine.
            process(200, 1, 50, 50),
            process(201, 200, 500, 0),
        ];
        assert_eq!(tree_ticks(100, &processes), Some(7 + 40 + 300 + 20));
        assert_eq!(tree_ticks(200, &processes), Some(600));
        assert_eq!(tree_ticks(999, &processes), None);
        // This process's tree: at least its own CPU.
        let own = own_cpu_seconds().unwrap();
        assert!(tree_cpu_seconds(std::process::id()).unwrap() >= own);
        assert_eq!(tree_cpu_seconds(u32::MAX / 2), None);
    }

    #[test]
    fn idle_share_counts_iowait_as_idle_and_steal_as_busy() {
        let before = MachineTicks::of_columns([100, 0, 100, 700, 100, 0, 0, 0]);
        assert_eq!(
            before,
            MachineTicks {
                total: 1000,
                idle: 800
            }
        );
        // 400 ticks later: 320 busy (50 of them stolen), 80 idle or waiting on I/O.
        let after = MachineTicks::of_columns([320, 0, 150, 760, 120, 0, 0, 50]);
        assert_eq!(idle_share(before, after), Some(0.2));
        assert_eq!(idle_share(after, before), None);
        assert_eq!(idle_share(before, before), None);
        let now = machine_ticks().unwrap();
        assert!(now.total >= now.idle && now.total > 0, "{now:?}");
    }
}
