//! An update as the fan-out handles it: encoded once ([`EncodedUpdate`]: its JSON and its
//! complete WebSocket frame) under a key hashed once ([`MarketKey`]).
//!
//! Its own module because both sides of the fan-out need it: the hub ([`crate::hub`]) that
//! offers each update to its subscribers, and the per-client queue ([`crate::queue`]) that keeps
//! the newest version per key; with the type in either of them, the two imported each other.

use crate::frames;
use odds_contracts::OddsUpdate;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::Arc;
use std::time::Instant;

/// What a client's queue keeps one of: an event's odds in one market.
///
/// Hashed once, when the update is encoded: each delivery looks the key up several times in
/// its client's maps, and hashing two strings each time was a visible share of the fan-out's
/// CPU. The maps use [`KeyHasher`], which passes the stored hash through.
#[derive(Debug, Clone, Eq)]
pub struct MarketKey {
    pub event_id: Arc<str>,
    pub market: Arc<str>,
    hash: u64,
}

impl MarketKey {
    pub fn new(event_id: &str, market: &str) -> MarketKey {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (event_id, market).hash(&mut hasher);
        MarketKey {
            event_id: Arc::from(event_id),
            market: Arc::from(market),
            hash: hasher.finish(),
        }
    }
}

impl PartialEq for MarketKey {
    fn eq(&self, other: &MarketKey) -> bool {
        self.hash == other.hash && self.event_id == other.event_id && self.market == other.market
    }
}

impl Hash for MarketKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash);
    }
}

/// Passes a [`MarketKey`]'s precomputed hash through (it is already a good 64-bit hash).
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used by `MarketKey`; fold anything else in, never ignore it.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub(crate) type KeyMap<V> = HashMap<MarketKey, V, BuildHasherDefault<KeyHasher>>;

/// An update encoded once for all subscribers.
#[derive(Debug)]
pub struct EncodedUpdate {
    pub key: MarketKey,
    pub version: u64,
    /// The update's JSON, for the rarer `snapshot` frames.
    pub data_json: Box<str>,
    /// The complete `odds` WebSocket frame (header included), copied to every subscriber.
    pub odds_frame: Box<[u8]>,
    /// When this process received it, for the fan-out latency histogram.
    pub received_at: Instant,
}

impl EncodedUpdate {
    pub fn new(update: &OddsUpdate) -> Arc<EncodedUpdate> {
        let json = update.to_json();
        let mut odds_frame = Vec::new();
        frames::append_update(&mut odds_frame, "odds", &json);
        Arc::new(EncodedUpdate {
            key: MarketKey::new(&update.event_id, &update.market),
            version: update.version,
            odds_frame: odds_frame.into_boxed_slice(),
            data_json: json.into_boxed_str(),
            received_at: Instant::now(),
        })
    }
}
