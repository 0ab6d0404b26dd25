//! The whole pipeline, with the real binaries, through the operations Kubernetes performs
//! (rolling restarts of every stage, the processor scaled 1 → 3 → 1) and the faults a live
//! system meets (the supplier restarted, the processor SIGKILLed mid-batch, Redis, Postgres
//! and every Kafka broker down, records no stage should accept), judged as a client sees it:
//! WebSocket clients measure how long each froze their prices ([`freeze`]), and at the end
//! nothing the supplier sent is missing from `odds_history` and no client was ever shown an
//! older version after a newer one. A freshness canary runs beside the clients ([`canary`]):
//! the processor's SIGKILL must turn its `Fresh` verdict to `Frozen` and back to
//! `WithinObjective`, and its freeze must agree with the clients' within 10 %.
//!
//! `make test` runs it once and asserts what must always hold (nothing lost, no regression,
//! the stores agree, the DLQ holds the bad records). `make chaos` runs it `CHAOS_RUNS` (3)
//! times and prints the table of the README ("Faults and recovery"): median freezes against
//! the targets. Timings are reported, not asserted: the machine is shared. `CHAOS_KEEP_LOGS=1`
//! keeps the stages' logs and prints where they are.

#[path = "chaos/canary.rs"]
mod canary;
#[path = "chaos/checks.rs"]
mod checks;
#[path = "chaos/clients.rs"]
mod clients;
#[path = "chaos/freeze.rs"]
mod freeze;
#[path = "chaos/operations.rs"]
mod operations;
#[path = "chaos/report.rs"]
mod report;

use clients::{Endpoints, Observers};
use odds_canary::verdict::Verdict;
use odds_demo::{Launcher, LauncherOptions};
use operations::Operation;
use report::{RunResult, Window};
use std::time::{Duration, Instant};

const EVENTS: u32 = 6;
const RATE: u32 = 60;
const CLIENTS: usize = 2;
/// After an operation, prices must have moved for every client with versions the supplier
/// sent this long after it: a rebalance that follows a new replica's readiness lands inside
/// the operation's window.
const SETTLE: Duration = Duration::from_secs(2);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_recovers_from_every_ordinary_fault_losing_nothing() {
    let runs: usize = std::env::var("CHAOS_RUNS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut results = Vec::new();
    for run in 1..=runs {
        let result = one_run().await;
        result.print(run);
        results.push(result);
    }
    report::print_table(&results);
    for (run, result) in results.iter().enumerate() {
        let run = run + 1;
        assert!(
            result.lost.is_empty(),
            "run {run}: sent but not stored: {:?}",
            result.lost
        );
        assert!(
            result.lost_after_kafka.is_empty(),
            "run {run}: in Kafka but not stored: {:?}",
            result.lost_after_kafka
        );
        assert_eq!(
            result.regressions, 0,
            "run {run}: clients were shown older versions"
        );
    }
}

async fn one_run() -> RunResult {
    let mut options = LauncherOptions::for_tests(RATE, EVENTS, 0).unwrap();
    options.version_base = None; // restarts must keep versions rising, as in production
    let mut launcher = Launcher::start(options).await.unwrap();
    let events: Vec<String> = (1..=EVENTS).map(|i| format!("MATCH_{i:03}")).collect();
    let pool = sqlx::PgPool::connect(&launcher.infra.database_url)
        .await
        .unwrap();
    if std::env::var_os("CHAOS_KEEP_LOGS").is_some() {
        let data: String = sqlx::query_scalar("SELECT current_setting('data_directory')")
            .fetch_one(&pool)
            .await
            .unwrap();
        let server_log = std::path::Path::new(&data).with_file_name("server.log");
        let signals = launcher.log_dir().join("postmaster-signals.log");
        trace_signals(
            &std::path::Path::new(&data).join("postmaster.pid"),
            &signals,
        );
        keep_logs_on_panic(vec![launcher.log_dir().to_path_buf(), server_log]);
    }
    operations::add_refusing_constraint(&pool).await;

    let endpoints = Endpoints::new(launcher.service_addrs());
    let supplier_ops = launcher.child("supplier-simulator").unwrap().ops_addr;
    let mut observers = Observers::start(
        launcher.supplier_url().unwrap(),
        supplier_ops,
        &endpoints,
        &events,
        CLIENTS,
    );
    let canary = canary::JudgedCanary::start(&endpoints, &events);
    moving_again(&launcher, &observers, Instant::now() + SETTLE, "start").await;

    let mut windows = Vec::new();
    for operation in Operation::ALL {
        if operation == Operation::KillProcessorMidBatch {
            // Fresh before, so that the kill's verdict is the kill's.
            canary
                .verdict(
                    Instant::now(),
                    "WithinObjective before the kill",
                    Verdict::is_fresh,
                )
                .await;
        }
        let started = Instant::now();
        let clock = operation.perform(&mut launcher, &endpoints, &pool).await;
        moving_again(
            &launcher,
            &observers,
            Instant::now() + SETTLE,
            operation.name(),
        )
        .await;
        let window = Window {
            operation,
            started,
            clock,
            ended: Instant::now(),
        };
        if operation == Operation::KillProcessorMidBatch {
            kill_is_judged_frozen_then_fresh(&canary, &observers, &window).await;
        }
        windows.push(window);
    }
    drop(canary);

    let end = checks::at_the_end(&mut launcher, &mut observers, &pool).await;
    let result = RunResult::new(&windows, &observers, end);
    drop(observers);
    pool.close().await;
    launcher.stop().await;
    if std::env::var_os("CHAOS_KEEP_LOGS").is_some() {
        println!(
            "chaos: the stages' logs are in {}",
            launcher.keep_logs().display()
        );
    }
    result
}

/// The canary's verdict on the processor's kill: `Frozen`, then `WithinObjective` again,
/// with a freeze that agrees with the run's own clients' within 10 % (see [`canary`]).
async fn kill_is_judged_frozen_then_fresh(
    canary: &canary::JudgedCanary,
    observers: &Observers,
    window: &Window,
) {
    let frozen = canary
        .verdict(window.started, "Frozen after the kill", |v| {
            *v == Verdict::Frozen
        })
        .await;
    let fresh = canary
        .verdict(
            frozen,
            "WithinObjective after the recovery",
            Verdict::is_fresh,
        )
        .await;
    let measured = canary.longest_measured_freeze(window.started, fresh);
    let seen = {
        let sent = observers.sent.lock().unwrap();
        observers
            .clients
            .iter()
            .map(|c| {
                freeze::longest_freeze(
                    &sent.upstream,
                    &c.lock().unwrap(),
                    window.clock,
                    window.ended,
                )
                .longest
            })
            .max()
            .unwrap_or_default()
    };
    println!(
        "chaos: processor kill: canary freeze {:.3} s, clients' {:.3} s; Frozen {:.1} s after the kill, fresh again {:.1} s later",
        measured.as_secs_f64(),
        seen.as_secs_f64(),
        frozen.duration_since(window.started).as_secs_f64(),
        fresh.duration_since(frozen).as_secs_f64(),
    );
    assert!(
        measured > canary::THRESHOLDS.max_freeze,
        "the canary measured no freeze above {:?} for the kill: {measured:?}",
        canary::THRESHOLDS.max_freeze
    );
    let gap = measured.abs_diff(seen);
    assert!(
        gap.as_secs_f64() <= seen.as_secs_f64() * 0.10,
        "the canary's freeze {measured:?} and the clients' {seen:?} differ by more than 10 %"
    );
}

/// Waits until every client shows, for every (event, market), a version the supplier sent at
/// or after `since`: prices are moving again everywhere.
async fn moving_again(launcher: &Launcher, observers: &Observers, since: Instant, after: &str) {
    tokio::time::sleep_until(since.into()).await;
    let deadline = Instant::now() + checks::SETTLE_LIMIT;
    let mut told = false;
    loop {
        let behind = observers.behind(since);
        if behind.is_empty() {
            return;
        }
        if !told && since.elapsed() > Duration::from_secs(5) {
            told = true;
            println!(
                "chaos diag after {after}: still behind: {behind:?}; {}",
                diagnosis(launcher).await
            );
        }
        assert!(
            Instant::now() < deadline,
            "after {after}: prices did not move within {:?} for {behind:?}",
            checks::SETTLE_LIMIT
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Copies the stages' and Postgres' logs somewhere that outlives a failed run (the launcher
/// removes its own when it is dropped).
fn keep_logs_on_panic(paths: Vec<std::path::PathBuf>) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let kept = std::env::temp_dir().join(format!("chaos-logs-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&kept);
        for path in &paths {
            let _ = std::process::Command::new("cp")
                .arg("-r")
                .arg(path)
                .arg(&kept)
                .status();
        }
        eprintln!("chaos: the logs are kept in {}", kept.display());
        previous(info);
    }));
}

/// Records the signals the throwaway Postgres receives, with their senders (`strace`, when
/// installed): a stray SIGTERM from outside the run shuts it down ("smart shutdown").
fn trace_signals(pid_file: &std::path::Path, out: &std::path::Path) {
    let Some(pid) = std::fs::read_to_string(pid_file)
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
    else {
        return;
    };
    let _ = std::process::Command::new("strace")
        .args(["-e", "trace=none", "-tt", "-p", &pid, "-o"])
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn();
}

/// What the stages report, for a run that is slow to recover.
async fn diagnosis(launcher: &Launcher) -> String {
    let scrape = odds_demo::status::Scrape::take(launcher).await;
    let pick = |s: &odds_demo::metrics_text::Samples, prefix: &str| {
        s.0.iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    format!(
        "ingest: {} {} | processor: {} {} {}",
        pick(&scrape.ingest, "odds_ingest_updates_produced"),
        pick(&scrape.ingest, "odds_ingest_in_flight"),
        pick(&scrape.processor, "odds_proc_messages_consumed"),
        pick(&scrape.processor, "odds_proc_consumer_lag"),
        pick(&scrape.processor, "odds_proc_errors"),
    )
}
