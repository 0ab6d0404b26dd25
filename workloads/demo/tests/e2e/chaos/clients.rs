//! The observers of a fault run: a tap on the supplier's stream (what was sent, and when) and
//! WebSocket clients of odds-service (what was shown, and when).
//!
//! The clients reach odds-service through [`Endpoints`], the addresses a Kubernetes Service
//! would route to: a replica leaves them when it is told to stop, so a client whose connection
//! closes reconnects to another replica, subscribes again and carries on with what it had
//! shown (a regression across replicas is still a regression).

use super::freeze::{Key, Shown, Upstream};
use futures_util::{SinkExt, StreamExt};
use odds_contracts::ws::{ClientMessage, ServerMessage};
use odds_contracts::OddsUpdate;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

pub fn key(update: &OddsUpdate) -> Key {
    (update.event_id.clone(), update.market.clone())
}

/// The odds-service replicas clients may connect to.
#[derive(Clone, Default)]
pub struct Endpoints(Arc<Mutex<Vec<SocketAddr>>>);

impl Endpoints {
    pub fn new(addrs: Vec<SocketAddr>) -> Self {
        Endpoints(Arc::new(Mutex::new(addrs)))
    }

    pub fn add(&self, addr: SocketAddr) {
        self.0.lock().unwrap().push(addr);
    }

    pub fn remove(&self, addr: SocketAddr) {
        self.0.lock().unwrap().retain(|a| *a != addr);
    }

    /// Every address, now.
    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.0.lock().unwrap().clone()
    }

    fn pick(&self, n: usize) -> Option<SocketAddr> {
        let addrs = self.0.lock().unwrap();
        (!addrs.is_empty()).then(|| addrs[n % addrs.len()])
    }
}

/// What the supplier sent: every version with when, and its last update per (event, market).
#[derive(Default)]
pub struct Sent {
    pub upstream: Upstream,
    pub last: BTreeMap<Key, OddsUpdate>,
}

/// The tap and the clients, running.
pub struct Observers {
    pub sent: Arc<Mutex<Sent>>,
    pub clients: Vec<Arc<Mutex<Shown>>>,
    pub reconnects: Arc<AtomicUsize>,
    supplier_gone: Arc<AtomicBool>,
    tap: Option<JoinHandle<()>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Observers {
    pub fn start(
        supplier_url: String,
        supplier_ops: SocketAddr,
        endpoints: &Endpoints,
        events: &[String],
        clients: usize,
    ) -> Self {
        let sent = Arc::new(Mutex::new(Sent::default()));
        let supplier_gone = Arc::new(AtomicBool::new(false));
        let tap = tokio::spawn(tap_supplier(
            supplier_url,
            supplier_ops,
            sent.clone(),
            supplier_gone.clone(),
        ));
        let reconnects = Arc::new(AtomicUsize::new(0));
        let mut shown = Vec::new();
        let mut tasks = Vec::new();
        for index in 0..clients {
            let log = Arc::new(Mutex::new(Shown::default()));
            shown.push(log.clone());
            tasks.push(tokio::spawn(follow(
                endpoints.clone(),
                events.to_vec(),
                log,
                index,
                reconnects.clone(),
            )));
        }
        Observers {
            sent,
            clients: shown,
            reconnects,
            supplier_gone,
            tap: Some(tap),
            tasks,
        }
    }

    /// Waits until the tap has read the supplier's stream to its end (after the supplier was
    /// told to stop): then it knows the supplier's very last updates.
    pub async fn supplier_stopped(&mut self) {
        self.supplier_gone.store(true, Ordering::SeqCst);
        if let Some(tap) = self.tap.take() {
            tokio::time::timeout(Duration::from_secs(30), tap)
                .await
                .expect("the tap ends with the supplier")
                .unwrap();
        }
    }

    /// Keys where some client has not yet shown the first version the supplier sent at or
    /// after `since` (or the supplier sent none yet): empty once prices moved for everyone.
    pub fn behind(&self, since: Instant) -> Vec<(usize, Key)> {
        let sent = self.sent.lock().unwrap();
        let mut behind = Vec::new();
        for key in sent.upstream.accepted.keys() {
            let target = sent.upstream.first_sent_since(key, since);
            for (index, client) in self.clients.iter().enumerate() {
                let shown = client.lock().unwrap().newest(key);
                if target.is_none_or(|v| shown < v) {
                    behind.push((index, key.clone()));
                }
            }
        }
        behind
    }
}

impl Drop for Observers {
    fn drop(&mut self) {
        for task in self.tasks.iter().chain(self.tap.iter()) {
            task.abort();
        }
    }
}

/// Reads the supplier's stream as a second client (the supplier sends every client the same
/// stream). Reconnects across supplier restarts; returns once the stream ends after `gone`.
///
/// It connects only while ingest is connected (the supplier counts its clients): what it sees
/// is then what ingest received too. Connected first, it would see the restarted supplier's
/// first image and deltas, which no ingest ever received, as sent.
async fn tap_supplier(
    url: String,
    supplier_ops: SocketAddr,
    sent: Arc<Mutex<Sent>>,
    gone: Arc<AtomicBool>,
) {
    loop {
        let ingest_connected = match odds_testkit::http_get(supplier_ops, "/metrics").await {
            Ok(r) => {
                odds_demo::metrics_text::Samples::parse(&r.body).sum("odds_sim_clients") >= 1.0
            }
            Err(_) => false,
        };
        if !ingest_connected {
            if gone.load(Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            continue;
        }
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(&url).await {
            while let Some(Ok(message)) = ws.next().await {
                let at = Instant::now();
                let Message::Text(text) = message else {
                    continue;
                };
                let Ok(update) = odds_contracts::parse_update(text.as_bytes()) else {
                    continue;
                };
                let mut sent = sent.lock().unwrap();
                sent.upstream.record(key(&update), update.version, at);
                let newest = sent.last.get(&key(&update)).map_or(0, |u| u.version);
                if update.version >= newest {
                    sent.last.insert(key(&update), update);
                }
            }
        }
        if gone.load(Ordering::SeqCst) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One `/ws/odds` client following `events`, one subscription each, through every
/// disconnect: it reconnects at once to the next endpoint.
async fn follow(
    endpoints: Endpoints,
    events: Vec<String>,
    log: Arc<Mutex<Shown>>,
    index: usize,
    reconnects: Arc<AtomicUsize>,
) {
    let mut attempt = index;
    loop {
        if let Some(addr) = endpoints.pick(attempt) {
            let _ = follow_once(addr, &events, &log).await;
            reconnects.fetch_add(1, Ordering::Relaxed);
        }
        attempt += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Follows `events` on one connection until it closes. A subscription refused (an event not
/// known yet, the store unavailable) is asked for again shortly, as a real client would.
async fn follow_once(
    addr: SocketAddr,
    events: &[String],
    log: &Mutex<Shown>,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/odds")).await?;
    let (mut sink, mut stream) = ws.split();
    let mut refused: Vec<String> = events.to_vec();
    let mut retry = tokio::time::interval(Duration::from_millis(100));
    loop {
        tokio::select! {
            _ = retry.tick() => {
                for event in std::mem::take(&mut refused) {
                    let subscribe = ClientMessage::Subscribe { event_id: event, conflate_ms: None };
                    sink.send(Message::text(serde_json::to_string(&subscribe).unwrap())).await?;
                }
            }
            message = stream.next() => {
                let Some(message) = message else {
                    return Ok(());
                };
                let at = Instant::now();
                let Message::Text(text) = message? else {
                    continue;
                };
                match serde_json::from_str(&text) {
                    Ok(ServerMessage::Snapshot { data } | ServerMessage::Odds { data }) => {
                        log.lock().unwrap().record(key(&data), data.version, at);
                    }
                    Ok(ServerMessage::Error { event_id: Some(event), .. }) => refused.push(event),
                    _ => {}
                }
            }
        }
    }
}
