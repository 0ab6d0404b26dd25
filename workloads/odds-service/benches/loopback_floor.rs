//! loopback-floor: what the kernel alone charges a sender for one WebSocket frame on this
//! machine, so the fan-out's CPU per delivery (ws-load) can be read against a floor.
//!
//! A fan-out that writes each frame with its own `write(2)` cannot cost less than that
//! syscall. On loopback the sender's syscall also runs the receiving socket's TCP processing
//! and wakes the reader (on a real network the receiving host pays for that), so the floor here
//! is higher than on a network. This tool has no WebSocket library, no task per client and no
//! queue: one thread writes a pre-built `odds` frame (the bytes odds-service sends, header
//! included) to every follower of an event, one `write(2)` per frame (or `--frames-per-write K`
//! frames per write, what write coalescing would give), paced like ws-load's publisher; the
//! clients read in a tokio runtime as ws-load's do. It reports the writing thread's CPU per
//! frame, split into user and kernel time.
//!
//! `cargo bench -p odds-service --bench loopback-floor -- --clients 1000 --events 100 --rate 1000 --seconds 15`
//! (the same load as ws-load's first row; raise `ulimit -n` first).

use anyhow::{bail, Context, Result};
use odds_contracts::ws::ServerMessage;
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

struct Args {
    clients: usize,
    events: usize,
    rate: u64,
    seconds: u64,
    frames_per_write: usize,
    /// The service's default kernel send buffer per client socket (`WS_SEND_BUFFER_BYTES`).
    send_buffer: usize,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        clients: 1000,
        events: 100,
        rate: 1000,
        seconds: 15,
        frames_per_write: 1,
        send_buffer: 32 * 1024,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().context("missing value");
        match flag.as_str() {
            "--clients" => args.clients = value()?.parse()?,
            "--events" => args.events = value()?.parse()?,
            "--rate" => args.rate = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--frames-per-write" => args.frames_per_write = value()?.parse()?,
            "--send-buffer" => args.send_buffer = value()?.parse()?,
            // cargo bench passes --bench to harness-less targets.
            "--bench" => {}
            other => bail!(
                "unknown argument {other}; use --clients --events --rate --seconds \
                 --frames-per-write --send-buffer"
            ),
        }
    }
    if args.clients == 0 || args.events == 0 || args.rate == 0 || args.frames_per_write == 0 {
        bail!("--clients, --events, --rate and --frames-per-write must be at least 1");
    }
    Ok(args)
}

/// An unmasked WebSocket text frame (server to client), as tungstenite writes it.
fn text_frame(payload: &[u8]) -> Vec<u8> {
    let mut frame = vec![0x81];
    match payload.len() {
        len @ 0..=125 => frame.push(len as u8),
        len @ 126..=65535 => {
            frame.push(126);
            frame.extend_from_slice(&(len as u16).to_be_bytes());
        }
        len => {
            frame.push(127);
            frame.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(payload);
    frame
}

/// This thread's CPU so far: (total from the scheduler in ns, user ticks, system ticks).
fn thread_cpu() -> Result<(u64, u64, u64)> {
    let schedstat = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let on_cpu_ns = schedstat
        .split_whitespace()
        .next()
        .context("empty schedstat")?
        .parse()?;
    let stat = std::fs::read_to_string("/proc/thread-self/stat")?;
    // Fields after the command name (which may contain spaces) start at field 3.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let user = fields.get(11).context("no utime")?.parse()?;
    let system = fields.get(12).context("no stime")?.parse()?;
    Ok((on_cpu_ns, user, system))
}

struct WriterReport {
    frames: u64,
    writes: u64,
    elapsed: Duration,
    on_cpu_ns: u64,
    user_ticks: u64,
    system_ticks: u64,
}

/// Writes `frame` to every follower of each published event, paced at `rate` updates/s.
fn write_frames(args: &Args, sockets: &mut [TcpStream], frame: &[u8]) -> Result<WriterReport> {
    let group = frame.repeat(args.frames_per_write);
    let updates = args.rate * args.seconds / args.frames_per_write as u64;
    let interval = Duration::from_secs_f64(args.frames_per_write as f64 / args.rate as f64);
    let (cpu0, user0, system0) = thread_cpu()?;
    let start = Instant::now();
    let (mut frames, mut writes) = (0u64, 0u64);
    for update in 0..updates {
        let due = start + interval.mul_f64(update as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let event = (update % args.events as u64) as usize;
        for socket in sockets.iter_mut().skip(event).step_by(args.events) {
            socket.write_all(&group).context("write to a client")?;
            writes += 1;
            frames += args.frames_per_write as u64;
        }
    }
    let elapsed = start.elapsed();
    let (cpu1, user1, system1) = thread_cpu()?;
    Ok(WriterReport {
        frames,
        writes,
        elapsed,
        on_cpu_ns: cpu1 - cpu0,
        user_ticks: user1 - user0,
        system_ticks: system1 - system0,
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let update = odds_testkit::sample_update("MATCH_001", 1);
    let frame = text_frame(ServerMessage::odds_frame(&update.to_json()).as_bytes());

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(args.clients);
    let mut sockets = Vec::with_capacity(args.clients);
    for _ in 0..args.clients {
        let client = TcpStream::connect(addr).context("connect (raise ulimit -n?)")?;
        client.set_nonblocking(true)?;
        let (server_side, _) = listener.accept()?;
        let socket = socket2::SockRef::from(&server_side);
        socket.set_send_buffer_size(args.send_buffer)?;
        socket.set_tcp_nodelay(true)?;
        sockets.push(server_side);
        let received = received.clone();
        readers.push(runtime.spawn(async move {
            let mut client = tokio::net::TcpStream::from_std(client)?;
            let mut buf = vec![0u8; 4096];
            loop {
                let n = client.read(&mut buf).await?;
                if n == 0 {
                    return Ok::<_, std::io::Error>(());
                }
                received.fetch_add(n as u64, Ordering::Relaxed);
            }
        }));
    }

    let report = write_frames(&args, &mut sockets, &frame)?;
    let expected = report.frames * frame.len() as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while received.load(Ordering::Relaxed) < expected {
        if Instant::now() > deadline {
            bail!(
                "clients read {} of {expected} bytes within 30 s",
                received.load(Ordering::Relaxed)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(sockets);
    for reader in readers {
        runtime.block_on(reader)??;
    }
    let per_frame_us = report.on_cpu_ns as f64 / 1000.0 / report.frames as f64;
    let ticks = (report.user_ticks + report.system_ticks).max(1) as f64;
    println!(
        "loopback-floor: {} clients, {} events, {} updates/s, {:.1} s, {} frame(s) of {} bytes per write",
        args.clients,
        args.events,
        args.rate,
        report.elapsed.as_secs_f64(),
        args.frames_per_write,
        frame.len()
    );
    println!(
        "  frames: {} in {} writes ({:.0} frames/s), all read by the clients",
        report.frames,
        report.writes,
        report.frames as f64 / report.elapsed.as_secs_f64()
    );
    println!(
        "  writing thread CPU: {:.2} s, {per_frame_us:.2} us per frame ({:.0} % kernel, {:.0} % user)",
        report.on_cpu_ns as f64 / 1e9,
        100.0 * report.system_ticks as f64 / ticks,
        100.0 * report.user_ticks as f64 / ticks
    );
    Ok(())
}
