//! loopback-floor: what the kernel alone charges a sender for one WebSocket frame on this
//! machine, so the fan-out's CPU per delivery (ws-load) can be read against a floor.
//!
//! A fan-out that writes each frame with its own `write(2)` cannot cost less than that
//! syscall. On loopback the sender's syscall also runs the receiving socket's TCP processing
//! and wakes the reader (on a real network the receiving host pays for that), so the floor here
//! is higher than on a network. Its write path has no WebSocket library, no task per client
//! and no queue: one thread writes a pre-built `odds` frame (the bytes odds-service sends,
//! header included, framed once by tungstenite) to every follower of an event, one `write(2)` per frame (or `--frames-per-write K`
//! frames per write, what write coalescing would give), paced like ws-load's publisher; the
//! clients read in a tokio runtime as ws-load's do. It reports the writing thread's CPU per
//! frame, split into user and kernel time.
//!
//! `cargo bench -p odds-service --bench loopback-floor -- --clients 1000 --events 100 --rate 1000 --seconds 15`
//! (the same load as ws-load's first row; raise `ulimit -n` first).

mod common;

use anyhow::{bail, Context, Result};
use common::Load;
use odds_contracts::ws::ServerMessage;
use odds_testkit::usage::{self, CpuSplit, ThreadCpu};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;

struct Args {
    load: Load,
    frames_per_write: usize,
    /// The service's default kernel send buffer per client socket (`WS_SEND_BUFFER_BYTES`).
    send_buffer: usize,
}

fn parse_args() -> Result<Args> {
    let (mut frames_per_write, mut send_buffer) = (1, 32 * 1024);
    let load = Load::E.parse(|flag, value| {
        match flag {
            "--frames-per-write" => frames_per_write = value()?.parse()?,
            "--send-buffer" => send_buffer = value()?.parse()?,
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    if frames_per_write == 0 {
        bail!("--frames-per-write must be at least 1");
    }
    Ok(Args {
        load,
        frames_per_write,
        send_buffer,
    })
}

/// The `odds` frame odds-service writes for an update: unmasked text, header included.
fn odds_frame() -> Result<Vec<u8>> {
    let update = odds_testkit::sample_update("MATCH_001", 1);
    let payload = ServerMessage::odds_frame(&update.to_json());
    let mut frame = Vec::new();
    Frame::message(payload, OpCode::Data(Data::Text), true).format(&mut frame)?;
    Ok(frame)
}

/// This thread's CPU so far.
fn thread_cpu() -> Result<ThreadCpu> {
    usage::thread_cpu().context("unreadable /proc/thread-self/stat or schedstat")
}

struct WriterReport {
    frames: u64,
    writes: u64,
    elapsed: Duration,
    on_cpu_ns: u64,
    cpu: CpuSplit,
}

/// Writes `frame` to every follower of each published event, paced at `rate` updates/s.
fn write_frames(args: &Args, sockets: &mut [TcpStream], frame: &[u8]) -> Result<WriterReport> {
    let group = frame.repeat(args.frames_per_write);
    let updates = args.load.rate * args.load.seconds / args.frames_per_write as u64;
    let interval = Duration::from_secs_f64(args.frames_per_write as f64 / args.load.rate as f64);
    let before = thread_cpu()?;
    let start = Instant::now();
    let (mut frames, mut writes) = (0u64, 0u64);
    for update in 0..updates {
        let due = start + interval.mul_f64(update as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let event = (update % args.load.events as u64) as usize;
        for socket in sockets.iter_mut().skip(event).step_by(args.load.events) {
            socket.write_all(&group).context("write to a client")?;
            writes += 1;
            frames += args.frames_per_write as u64;
        }
    }
    let elapsed = start.elapsed();
    let after = thread_cpu()?;
    Ok(WriterReport {
        frames,
        writes,
        elapsed,
        on_cpu_ns: after.on_cpu_ns.saturating_sub(before.on_cpu_ns),
        cpu: after.split.since(&before.split),
    })
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let frame = odds_frame()?;

    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let received = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::with_capacity(args.load.clients);
    let mut sockets = Vec::with_capacity(args.load.clients);
    for _ in 0..args.load.clients {
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
    // The split comes from USER_HZ ticks (10 ms): a share, not a second figure of the total.
    let sampled = report.cpu.total().max(0.01);
    println!(
        "loopback-floor: {} clients, {} events, {} updates/s, {:.1} s, {} frame(s) of {} bytes per write",
        args.load.clients,
        args.load.events,
        args.load.rate,
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
        100.0 * report.cpu.system / sampled,
        100.0 * report.cpu.user / sampled
    );
    Ok(())
}
