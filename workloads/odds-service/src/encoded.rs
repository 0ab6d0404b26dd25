//! An update as the fan-out handles it: encoded once ([`EncodedUpdate`]: its JSON and its
//! complete WebSocket frame) under a key hashed once ([`MarketKey`]).
//!
//! Its own module because both sides of the fan-out need it: the hub ([`crate::hub`]) that
//! offers each update to its subscribers, and the per-client queue ([`crate::queue`]) that keeps
//! the newest version per key; with the type in either of them, the two imported each other.
//!
//! A key's strings are shared wherever possible ([`Hub::encode`](crate::hub::Hub::encode)
//! takes the event id from the hub, markets come from one static set): each delivery compares
//! its key with the one its client stored, and `Arc`'s equality returns at once for the same
//! allocation, instead of reading both strings from memory the fan-out last touched 100 ms
//! ago (a cache miss per delivery, 4 % of the service's CPU at 10 k deliveries/s).

use crate::frames;
use odds_contracts::{Market, OddsUpdate};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::sync::{Arc, LazyLock};
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
        MarketKey::with_event(Arc::from(event_id), market)
    }

    /// A key whose event id is `event_id` itself (shared, not copied).
    pub fn with_event(event_id: Arc<str>, market: &str) -> MarketKey {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (&*event_id, market).hash(&mut hasher);
        MarketKey {
            market: shared_market(market),
            event_id,
            hash: hasher.finish(),
        }
    }
}

/// The one `Arc` of a known market (a new one for any other string).
fn shared_market(market: &str) -> Arc<str> {
    static MARKETS: LazyLock<Vec<Arc<str>>> =
        LazyLock::new(|| Market::ALL.iter().map(|m| Arc::from(m.as_str())).collect());
    MARKETS
        .iter()
        .find(|known| ***known == *market)
        .cloned()
        .unwrap_or_else(|| Arc::from(market))
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
        EncodedUpdate::with_event(update, Arc::from(update.event_id.as_str()))
    }

    /// [`EncodedUpdate::new`] with the key's event id shared from `event_id` (the same id).
    pub fn with_event(update: &OddsUpdate, event_id: Arc<str>) -> Arc<EncodedUpdate> {
        EncodedUpdate::from_json(event_id, &update.market, update.version, update.to_json())
    }

    /// The update whose JSON is `json` (already checked against the contract), keyed by
    /// `event_id` and `market`: no decoding, no encoding.
    pub fn from_json(
        event_id: Arc<str>,
        market: &str,
        version: u64,
        json: impl Into<Box<str>>,
    ) -> Arc<EncodedUpdate> {
        let json: Box<str> = json.into();
        let mut odds_frame = Vec::new();
        frames::append_update(&mut odds_frame, "odds", &json);
        Arc::new(EncodedUpdate {
            key: MarketKey::with_event(event_id, market),
            version,
            odds_frame: odds_frame.into_boxed_slice(),
            data_json: json,
            received_at: Instant::now(),
        })
    }
}
