//! What the canary saw, summarised over a sliding window: pure, so every rule is unit-tested
//! with made-up times.
//!
//! **Age** of an `odds` frame: the time it was received minus its `ingested_at`, both cluster
//! clocks. Snapshots are not aged (a snapshot of a quiet market is old by design, not late),
//! nor are frames without the stamp (read back from Postgres, or from an older ingest).
//!
//! **Freeze**, as the fault run defines it: for one (event, market), the time a client showed
//! a version while a newer one existed upstream. The canary has no tap on the supplier, so it
//! dates "a newer one existed" from the stamps it receives. When a newer version `w` of a
//! market arrives and the event's versions are contiguous (`w` is one above the newest the
//! canary saw of the event, in any market), the first newer version is `w` itself, accepted at
//! its `ingested_at`: exact. When versions were skipped (conflated while a stage caught up,
//! or missed while the canary was disconnected), the skipped ones were accepted after the
//! newest version the canary saw of the event, so the freeze is dated from that version's
//! accept time: an overstatement of at most one update interval of the event, the safe side
//! for an alarm. The freeze ends when the newer version is received; it never starts before
//! the shown version arrived.
//!
//! **Blindness**: while the canary is disconnected, cannot connect, or odds-service says live
//! updates stopped (`status` with `live: false`), it cannot see prices move. It then counts a
//! freeze in progress from the last frame it received (the moment it went blind if it had
//! none), so its own reconnect gap or a stopped pipeline is never reported as fresh; once it
//! sees again, the frames that follow measure what really was frozen (the rule above).

use chrono::{DateTime, Utc};
use odds_contracts::OddsUpdate;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

/// Current odds are per (event, market).
pub type Key = (String, String);

/// Slots a window is cut into: a summary forgets at most one slot's length too late.
const SLOTS_PER_WINDOW: u32 = 30;

/// How a frame reached the canary.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// Current odds sent right after a subscription (after every reconnect too).
    Snapshot,
    /// A live update.
    Odds,
}

/// Why the canary cannot see prices move.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Blindness {
    /// Its connection to odds-service closed or went silent; it is reconnecting.
    Disconnected(String),
    /// It cannot connect to odds-service at all (refused, unresolvable, timed out).
    Unreachable(String),
    /// odds-service says live updates stopped, with its reason.
    NotLive(String),
}

impl Blindness {
    pub fn describe(&self) -> String {
        match self {
            Blindness::Disconnected(why) => format!("the canary lost its connection: {why}"),
            Blindness::Unreachable(why) => format!("the canary cannot reach odds-service: {why}"),
            Blindness::NotLive(why) => format!("odds-service says live updates stopped: {why}"),
        }
    }
}

/// Whether the canary sees prices move now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sight {
    /// Connected, subscribed, and live updates flow.
    Watching,
    /// Blind since `since` (the last frame received before, or the moment it went blind).
    Blind {
        since: DateTime<Utc>,
        why: Blindness,
    },
    /// Not started yet (no connection attempt has finished).
    Starting,
}

/// The canary's figures over its window.
#[derive(Clone, Debug, PartialEq)]
pub struct Summary {
    pub measured_at: DateTime<Utc>,
    pub window: Duration,
    /// `odds` frames with an `ingested_at` received in the window (each one an age sample).
    pub frames_sampled: u64,
    /// Median and 99th percentile age of those frames, in milliseconds (upper bounds within
    /// 1 %); `None` without samples.
    pub p50_ms: Option<u64>,
    pub p99_ms: Option<u64>,
    /// The longest freeze that ended in the window, or is in progress (while blind).
    pub longest_freeze: Duration,
    /// Where the longest freeze was; `None` when it is the blindness in progress.
    pub longest_freeze_key: Option<Key>,
    /// Median of `ingested_at − updated_at` (the supplier's clock skew plus its hop to
    /// ingest), reported apart from the age, which never reads the supplier's clock.
    pub supplier_skew_p50_ms: Option<i64>,
    pub sight: Sight,
}

/// Counts by value, in buckets precise to about 1 % (exact below 128): a window of a busy
/// pipeline holds hundreds of thousands of samples, the buckets a few dozen.
#[derive(Clone, Debug, Default)]
struct Histogram {
    counts: BTreeMap<i64, u64>,
}

/// The upper bound of the bucket holding `value` (the sign kept).
fn bucket(value: i64) -> i64 {
    let magnitude = value.unsigned_abs();
    let rounded = if magnitude < 128 {
        magnitude
    } else {
        // Seven significant bits, rounded up.
        let shift = 64 - magnitude.leading_zeros() - 7;
        ((magnitude >> shift) + 1) << shift
    };
    let rounded = i64::try_from(rounded).unwrap_or(i64::MAX);
    if value < 0 {
        -rounded
    } else {
        rounded
    }
}

impl Histogram {
    fn add(&mut self, value: i64) {
        *self.counts.entry(bucket(value)).or_default() += 1;
    }

    fn merge(&mut self, other: &Histogram) {
        for (value, count) in &other.counts {
            *self.counts.entry(*value).or_default() += count;
        }
    }

    fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// The smallest bucket bound with at least `q` of the samples at or below it.
    fn quantile(&self, q: f64) -> Option<i64> {
        let total = self.total();
        if total == 0 {
            return None;
        }
        // Rank of the quantile sample, 1-based: ceil(q × n), at least 1.
        let rank = ((q * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (value, count) in &self.counts {
            seen += count;
            if seen >= rank {
                return Some(*value);
            }
        }
        self.counts.keys().next_back().copied()
    }
}

/// What one slot of the window holds.
#[derive(Clone, Debug)]
struct Slot {
    start: DateTime<Utc>,
    ages: Histogram,
    skews: Histogram,
    longest_freeze: Duration,
    longest_freeze_key: Option<Key>,
}

/// A price on the canary's screen.
#[derive(Clone, Copy, Debug)]
struct Shown {
    version: u64,
    at: DateTime<Utc>,
}

/// The newest version of an event the canary saw (any market), and when it was accepted.
#[derive(Clone, Copy, Debug)]
struct Newest {
    version: u64,
    accepted: DateTime<Utc>,
}

/// The canary's memory: what it shows, and its window of figures.
#[derive(Debug)]
pub struct Recorder {
    window: Duration,
    slot: chrono::Duration,
    slots: VecDeque<Slot>,
    shown: HashMap<Key, Shown>,
    newest: HashMap<String, Newest>,
    last_frame_at: Option<DateTime<Utc>>,
    sight: Sight,
    /// Every age since the start, for counters (an SLO's error budget counts events).
    lifetime_ages: Histogram,
}

impl Recorder {
    /// A recorder summarising the last `window` (at least one second).
    pub fn new(window: Duration) -> Recorder {
        let window = window.max(Duration::from_secs(1));
        let slot = chrono::Duration::from_std(window / SLOTS_PER_WINDOW)
            .unwrap_or(chrono::Duration::seconds(1))
            .max(chrono::Duration::milliseconds(10));
        Recorder {
            window,
            slot,
            slots: VecDeque::new(),
            shown: HashMap::new(),
            newest: HashMap::new(),
            last_frame_at: None,
            sight: Sight::Starting,
            lifetime_ages: Histogram::default(),
        }
    }

    /// A frame of `update`, received at `received`.
    pub fn frame(&mut self, kind: FrameKind, update: &OddsUpdate, received: DateTime<Utc>) {
        self.last_frame_at = Some(received);
        let key = (update.event_id.clone(), update.market.clone());
        let freeze = self.freeze_ended_by(&key, update, received);
        let age = match (kind, update.ingested_at) {
            (FrameKind::Odds, Some(accepted)) => Some(millis_between(accepted, received).max(0)),
            _ => None,
        };
        if let Some(age) = age {
            self.lifetime_ages.add(age);
        }
        let slot = self.slot_at(received);
        if let Some(frozen) = freeze {
            if frozen > slot.longest_freeze {
                slot.longest_freeze = frozen;
                slot.longest_freeze_key = Some(key.clone());
            }
        }
        if let (Some(age), Some(accepted)) = (age, update.ingested_at) {
            slot.ages.add(age);
            slot.skews.add(millis_between(update.updated_at, accepted));
        }
        let shown = self.shown.get(&key).map_or(0, |s| s.version);
        if update.version > shown {
            self.shown.insert(
                key,
                Shown {
                    version: update.version,
                    at: received,
                },
            );
        }
        let newest = self.newest.get(&update.event_id).map_or(0, |n| n.version);
        if update.version > newest {
            self.newest.insert(
                update.event_id.clone(),
                Newest {
                    version: update.version,
                    accepted: update.ingested_at.unwrap_or(received),
                },
            );
        }
    }

    /// How long `key` was frozen, when `update` is newer than what the canary shows of it
    /// (see the module doc); `None` for a first sight, an old or repeated version.
    fn freeze_ended_by(
        &self,
        key: &Key,
        update: &OddsUpdate,
        received: DateTime<Utc>,
    ) -> Option<Duration> {
        let shown = self.shown.get(key)?;
        if update.version <= shown.version {
            return None;
        }
        let newest = self.newest.get(&update.event_id)?;
        let contiguous = update.version == newest.version.saturating_add(1);
        let newer_since = match (contiguous, update.ingested_at) {
            (true, Some(accepted)) => accepted,
            _ => newest.accepted,
        };
        let start = newer_since.max(shown.at);
        Some(duration_between(start, received))
    }

    /// The canary cannot see prices move from `at` on (see [`Blindness`]).
    pub fn lost_sight(&mut self, at: DateTime<Utc>, why: Blindness) {
        let since = match &self.sight {
            // Still blind (a reconnect failed, the reason changed): the freeze goes on.
            Sight::Blind { since, .. } => *since,
            Sight::Watching | Sight::Starting => self.last_frame_at.unwrap_or(at).min(at),
        };
        self.sight = Sight::Blind { since, why };
    }

    /// The canary sees prices move again (subscribed, and live updates flow).
    pub fn regained_sight(&mut self) {
        self.sight = Sight::Watching;
    }

    /// Aged frames since the start, and how many of them were older than `threshold`
    /// (judged by bucket, so within 1 %).
    pub fn frames_over(&self, threshold: Duration) -> (u64, u64) {
        let limit = i64::try_from(threshold.as_millis()).unwrap_or(i64::MAX);
        let over = self
            .lifetime_ages
            .counts
            .range((limit + 1)..)
            .map(|(_, count)| count)
            .sum();
        (self.lifetime_ages.total(), over)
    }

    pub fn sight(&self) -> &Sight {
        &self.sight
    }

    /// The figures of the window ending at `now`.
    pub fn summary(&mut self, now: DateTime<Utc>) -> Summary {
        self.forget_before(now);
        let mut ages = Histogram::default();
        let mut skews = Histogram::default();
        let mut longest = Duration::ZERO;
        let mut longest_key = None;
        for slot in &self.slots {
            ages.merge(&slot.ages);
            skews.merge(&slot.skews);
            if slot.longest_freeze > longest {
                longest = slot.longest_freeze;
                longest_key = slot.longest_freeze_key.clone();
            }
        }
        if let Sight::Blind { since, .. } = &self.sight {
            let window_start = now - chrono::Duration::from_std(self.window).unwrap_or_default();
            let blind = duration_between((*since).max(window_start), now);
            if blind > longest {
                longest = blind;
                longest_key = None;
            }
        }
        let as_ms = |v: i64| u64::try_from(v.max(0)).unwrap_or(0);
        Summary {
            measured_at: now,
            window: self.window,
            frames_sampled: ages.total(),
            p50_ms: ages.quantile(0.50).map(as_ms),
            p99_ms: ages.quantile(0.99).map(as_ms),
            longest_freeze: longest,
            longest_freeze_key: longest_key,
            supplier_skew_p50_ms: skews.quantile(0.50),
            sight: self.sight.clone(),
        }
    }

    /// The slot `at` falls in (a new one when `at` is past the newest; the newest when a
    /// clock step put `at` before it).
    fn slot_at(&mut self, at: DateTime<Utc>) -> &mut Slot {
        let fresh = self
            .slots
            .back()
            .is_none_or(|last| at >= last.start + self.slot);
        if fresh {
            self.slots.push_back(Slot {
                start: at,
                ages: Histogram::default(),
                skews: Histogram::default(),
                longest_freeze: Duration::ZERO,
                longest_freeze_key: None,
            });
            self.forget_before(at);
        }
        let last = self.slots.len() - 1;
        &mut self.slots[last]
    }

    /// Drops the slots that ended before the window ending at `now` began.
    fn forget_before(&mut self, now: DateTime<Utc>) {
        let window = chrono::Duration::from_std(self.window).unwrap_or_default();
        while self
            .slots
            .front()
            .is_some_and(|s| s.start + self.slot <= now - window)
        {
            self.slots.pop_front();
        }
    }
}

fn millis_between(from: DateTime<Utc>, to: DateTime<Utc>) -> i64 {
    (to - from).num_milliseconds()
}

fn duration_between(from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
    (to - from).to_std().unwrap_or(Duration::ZERO)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn t(ms: i64) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(1_800_000_000_000 + ms)
            .single()
            .unwrap_or_default()
    }

    fn update(market: &str, version: u64, accepted_ms: Option<i64>) -> OddsUpdate {
        let mut update = OddsUpdate {
            event_id: "E1".into(),
            home_team: "A".into(),
            away_team: "B".into(),
            market: market.into(),
            odds: odds_contracts::Odds {
                home: 2.0,
                draw: 3.0,
                away: 4.0,
            },
            updated_at: t(accepted_ms.unwrap_or(0) - 5),
            source: "test".into(),
            version,
            ingested_at: None,
        };
        update.ingested_at = accepted_ms.map(t);
        update
    }

    #[test]
    fn ages_are_measured_on_odds_frames_with_a_stamp_only() {
        let mut recorder = Recorder::new(Duration::from_secs(60));
        recorder.frame(FrameKind::Snapshot, &update("1X2", 1, Some(0)), t(5_000));
        for (i, age) in [10, 20, 30, 40, 500].into_iter().enumerate() {
            let accepted = 6_000 + 100 * i as i64;
            let version = 2 + i as u64;
            recorder.frame(
                FrameKind::Odds,
                &update("1X2", version, Some(accepted)),
                t(accepted + age),
            );
        }
        recorder.frame(FrameKind::Odds, &update("1X2", 9, None), t(7_000));
        let summary = recorder.summary(t(8_000));
        assert_eq!(summary.frames_sampled, 5);
        assert_eq!(summary.p50_ms, Some(30));
        // 500 ms is in the bucket (496, 504].
        assert_eq!(summary.p99_ms, Some(504));
        assert_eq!(summary.supplier_skew_p50_ms, Some(5));
        assert_eq!(recorder.frames_over(Duration::from_millis(250)), (5, 1));
        assert_eq!(recorder.frames_over(Duration::from_millis(600)), (5, 0));
    }

    #[test]
    fn a_contiguous_newer_version_dates_its_freeze_from_its_own_stamp() {
        let mut recorder = Recorder::new(Duration::from_secs(60));
        recorder.frame(FrameKind::Odds, &update("1X2", 1, Some(0)), t(10));
        recorder.frame(FrameKind::Odds, &update("1X2", 2, Some(1_000)), t(4_000));
        let summary = recorder.summary(t(5_000));
        assert_eq!(summary.longest_freeze, Duration::from_millis(3_000));
        assert_eq!(
            summary.longest_freeze_key,
            Some(("E1".to_owned(), "1X2".to_owned()))
        );
    }

    #[test]
    fn skipped_versions_date_the_freeze_from_the_newest_version_seen_of_the_event() {
        let mut recorder = Recorder::new(Duration::from_secs(60));
        recorder.frame(FrameKind::Odds, &update("1X2", 1, Some(0)), t(10));
        recorder.frame(FrameKind::Odds, &update("HT_1X2", 2, Some(100)), t(110));
        // Versions 3..=9 were conflated away (a processor catching up): the first of them
        // was accepted after version 2 (at 100 ms), and HT_1X2 showed version 2 from 110 ms.
        recorder.frame(
            FrameKind::Odds,
            &update("HT_1X2", 10, Some(3_900)),
            t(4_000),
        );
        let summary = recorder.summary(t(5_000));
        assert_eq!(summary.longest_freeze, Duration::from_millis(3_890));
    }

    #[test]
    fn a_snapshot_of_the_shown_version_or_an_older_one_ends_nothing() {
        let mut recorder = Recorder::new(Duration::from_secs(60));
        recorder.frame(FrameKind::Odds, &update("1X2", 5, Some(0)), t(10));
        recorder.frame(FrameKind::Snapshot, &update("1X2", 5, Some(0)), t(2_000));
        recorder.frame(FrameKind::Odds, &update("1X2", 4, Some(0)), t(2_100));
        let summary = recorder.summary(t(3_000));
        assert_eq!(summary.longest_freeze, Duration::ZERO);
    }

    #[test]
    fn blindness_counts_as_a_freeze_in_progress_from_the_last_frame() {
        let mut recorder = Recorder::new(Duration::from_secs(60));
        recorder.frame(FrameKind::Odds, &update("1X2", 1, Some(0)), t(1_000));
        recorder.regained_sight();
        recorder.lost_sight(t(4_000), Blindness::NotLive("no heartbeat".into()));
        // A failed reconnect keeps the freeze going from the same moment.
        recorder.lost_sight(t(5_000), Blindness::Unreachable("refused".into()));
        let summary = recorder.summary(t(7_000));
        assert_eq!(summary.longest_freeze, Duration::from_secs(6));
        assert_eq!(summary.longest_freeze_key, None);
        assert!(matches!(
            summary.sight,
            Sight::Blind { why: Blindness::Unreachable(_), since } if since == t(1_000)
        ));
        // Seeing again: the blindness is no longer a freeze; the next frames say what was.
        recorder.regained_sight();
        recorder.frame(
            FrameKind::Snapshot,
            &update("1X2", 7, Some(6_500)),
            t(7_100),
        );
        let after = recorder.summary(t(7_200));
        assert_eq!(after.sight, Sight::Watching);
        // Versions 2..=6 were missed: frozen from version 1's acceptance, i.e. from its
        // arrival on screen at 1 s.
        assert_eq!(after.longest_freeze, Duration::from_millis(6_100));
    }

    #[test]
    fn the_window_forgets_old_samples_and_freezes() {
        let mut recorder = Recorder::new(Duration::from_secs(30));
        recorder.frame(FrameKind::Odds, &update("1X2", 1, Some(0)), t(100));
        recorder.frame(FrameKind::Odds, &update("1X2", 2, Some(1_000)), t(5_000));
        assert_eq!(recorder.summary(t(6_000)).frames_sampled, 2);
        let later = recorder.summary(t(60_000));
        assert_eq!(later.frames_sampled, 0);
        assert_eq!(later.p99_ms, None);
        assert_eq!(later.longest_freeze, Duration::ZERO);
    }

    #[test]
    fn buckets_keep_about_one_percent() {
        for value in [0, 1, 127, 128, 129, 1_000, 250_000, 9_000_000] {
            let upper = bucket(value);
            assert!(upper >= value, "{value} -> {upper}");
            assert!(
                (upper - value) as f64 <= value as f64 / 64.0 + 1.0,
                "{value} -> {upper}"
            );
        }
        assert_eq!(bucket(-40), -40);
    }
}
