//! The price generator: a reproducible stream of plausible odds movements.
//!
//! Versions must keep rising across restarts of the supplier: consumers ignore anything not
//! newer than what they hold, so a restarted supplier counting from 1 again would freeze every
//! price until it passed the old maximum. Each event's version is therefore `base + n`, where
//! `base` is the start time in microseconds since the Unix epoch and `n` counts this process's
//! quotes of the event. A restart later than the previous start by `t` µs stays newer as long as
//! the previous process quoted an event fewer than `t` times — at most one quote per µs, which
//! the rate limit (≤ 1 000 000 updates/s in all) guarantees. Microseconds keep versions below
//! 2^53, so JavaScript clients read them exactly.
//!
//! An event is quoted in every configured market (`1X2`, `HT_1X2`); its version counts the
//! quotes of all its markets, so each market's versions rise too and the consumers' current
//! odds per (event, market) keep the newest. Each market holds implied probabilities for
//! home/draw/away that drift as a bounded random walk; prices are quoted with a bookmaker margin, so the implied probabilities of the three
//! quoted odds sum to a little over 1 (as real books do) and every price stays above 1.0.

use chrono::{DateTime, Utc};
use odds_contracts::{Market, Odds, OddsUpdate};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Bookmaker margin (overround): quoted prices imply probabilities summing to 1 + MARGIN.
pub const MARGIN: f64 = 0.05;
/// Bounds of each outcome's probability, keeping prices between ~1.06 and ~24.
const MIN_PROB: f64 = 0.04;
const MAX_PROB: f64 = 0.90;
/// Largest relative move of a probability in one update.
const STEP: f64 = 0.04;

/// `source` of every update the simulator sends.
pub const SOURCE: &str = "supplier-simulator";

/// The seed's fixtures; events beyond these get generated names.
const SEED_MATCHES: [(&str, &str); 4] = [
    ("Arsenal", "Chelsea"),
    ("Liverpool", "Everton"),
    ("Real Madrid", "Barcelona"),
    ("Bayern Munich", "Borussia Dortmund"),
];
const CITIES: [&str; 16] = [
    "Lisbon",
    "Porto",
    "Milan",
    "Turin",
    "Lyon",
    "Marseille",
    "Seville",
    "Valencia",
    "Leeds",
    "Glasgow",
    "Vienna",
    "Prague",
    "Athens",
    "Istanbul",
    "Ajax",
    "Bruges",
];

#[derive(Debug, Clone)]
struct EventState {
    event_id: String,
    home_team: String,
    away_team: String,
    /// The newest version of any of the event's markets.
    version: u64,
    markets: Vec<MarketState>,
}

#[derive(Debug, Clone)]
struct MarketState {
    market: Market,
    probs: [f64; 3],
    /// The version this market was last quoted at.
    version: u64,
}

/// The id of the simulator's `number`-th event (from 1): `MATCH_001`, `MATCH_002`, …
pub fn event_id(number: usize) -> String {
    format!("MATCH_{number:03}")
}

/// Generates updates for a fixed set of events. Same seed, config and version base, same
/// sequence (event, version, prices); only `updated_at` reflects when each update is made.
#[derive(Debug, Clone)]
pub struct OddsFeed {
    rng: SmallRng,
    events: Vec<EventState>,
}

impl OddsFeed {
    /// Every event is quoted in each of `markets` (an empty list means `1X2`); every market
    /// starts quoted at version `version_base + 1` (see the module doc for the base). With
    /// one market the stream is the same as it always was for a seed.
    pub fn new(seed: u64, events: u32, markets: &[Market], version_base: u64) -> OddsFeed {
        let mut rng = SmallRng::seed_from_u64(seed);
        let markets = if markets.is_empty() {
            &[Market::MatchResult][..]
        } else {
            markets
        };
        let events = (0..events as usize)
            .map(|i| {
                let (home_team, away_team) = match SEED_MATCHES.get(i) {
                    Some((home, away)) => ((*home).to_owned(), (*away).to_owned()),
                    None => generated_teams(i),
                };
                let version = version_base.saturating_add(1);
                let markets = markets
                    .iter()
                    .map(|&market| {
                        let home = rng.random_range(0.30..0.55);
                        let draw = rng.random_range(0.20..0.30);
                        MarketState {
                            market,
                            probs: [home, draw, 1.0 - home - draw],
                            version,
                        }
                    })
                    .collect();
                EventState {
                    event_id: event_id(i + 1),
                    home_team,
                    away_team,
                    version,
                    markets,
                }
            })
            .collect();
        OddsFeed { rng, events }
    }

    pub fn event_count(&self) -> usize {
        self.events.len()
    }

    /// The next price change of a randomly chosen event and market, stamped `now`.
    pub fn next_update(&mut self, now: DateTime<Utc>) -> OddsUpdate {
        let index = self.rng.random_range(0..self.events.len());
        let event = &mut self.events[index];
        // No draw with one market, so a seed's single-market stream never changes.
        let market = match event.markets.len() {
            1 => 0,
            n => self.rng.random_range(0..n),
        };
        event.version += 1;
        let state = &mut event.markets[market];
        for p in &mut state.probs {
            *p *= 1.0 + self.rng.random_range(-STEP..STEP);
        }
        normalise(&mut state.probs);
        state.version = event.version;
        quote(event, &event.markets[market], now)
    }

    /// The current odds of every event in every market at their current versions, stamped
    /// `now`: what a client that (re)connects gets first, so an update it missed while away
    /// never leaves a market on a wrong price.
    pub fn image(&self, now: DateTime<Utc>) -> Vec<OddsUpdate> {
        self.events
            .iter()
            .flat_map(|event| event.markets.iter().map(move |m| quote(event, m, now)))
            .collect()
    }
}

/// The version base of a process starting now: microseconds since the Unix epoch.
pub fn clock_version_base() -> u64 {
    u64::try_from(Utc::now().timestamp_micros()).unwrap_or(0)
}

fn quote(event: &EventState, market: &MarketState, now: DateTime<Utc>) -> OddsUpdate {
    OddsUpdate {
        event_id: event.event_id.clone(),
        home_team: event.home_team.clone(),
        away_team: event.away_team.clone(),
        market: market.market.as_str().to_owned(),
        odds: Odds {
            home: price(market.probs[0]),
            draw: price(market.probs[1]),
            away: price(market.probs[2]),
        },
        updated_at: now,
        source: SOURCE.to_owned(),
        version: market.version,
        ingested_at: None,
    }
}

fn generated_teams(i: usize) -> (String, String) {
    let home = CITIES[i % CITIES.len()];
    let away = CITIES[(i / CITIES.len() + i + 1) % CITIES.len()];
    (format!("{home} FC {i}"), format!("{away} United {i}"))
}

/// Scales probabilities to sum to 1 and clamps each into its band (twice, since clamping
/// one moves the sum; two rounds keep every value within a hair of the bounds).
fn normalise(probs: &mut [f64; 3]) {
    for _ in 0..2 {
        let sum: f64 = probs.iter().sum();
        for p in probs.iter_mut() {
            *p = (*p / sum).clamp(MIN_PROB, MAX_PROB);
        }
    }
}

/// Decimal odds for a probability with the margin applied, to two decimals, never below 1.01.
fn price(probability: f64) -> f64 {
    let raw = 1.0 / (probability * (1.0 + MARGIN));
    ((raw * 100.0).round() / 100.0).max(1.01)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strip_time(mut u: OddsUpdate) -> OddsUpdate {
        u.updated_at = DateTime::<Utc>::UNIX_EPOCH;
        u
    }

    #[test]
    fn same_seed_same_stream_other_seed_other_stream() {
        let markets = [Market::MatchResult, Market::HalfTimeResult];
        let mut a = OddsFeed::new(7, 10, &markets, 0);
        let mut b = OddsFeed::new(7, 10, &markets, 0);
        let mut c = OddsFeed::new(8, 10, &markets, 0);
        let now = Utc::now;
        let sa: Vec<_> = (0..500).map(|_| strip_time(a.next_update(now()))).collect();
        let sb: Vec<_> = (0..500).map(|_| strip_time(b.next_update(now()))).collect();
        let sc: Vec<_> = (0..500).map(|_| strip_time(c.next_update(now()))).collect();
        assert_eq!(sa, sb);
        assert_ne!(sa, sc);
    }

    #[test]
    fn updates_are_valid_versioned_and_carry_a_margin() {
        let mut feed = OddsFeed::new(1, 6, &[], 0);
        let mut last_version = std::collections::HashMap::new();
        for _ in 0..20_000 {
            let u = feed.next_update(Utc::now());
            assert_eq!(u.validate(), Ok(()), "{u:?}");
            let prev = last_version
                .insert(u.event_id.clone(), u.version)
                .unwrap_or(1);
            assert_eq!(u.version, prev + 1, "versions rise by one per event");
            let overround = 1.0 / u.odds.home + 1.0 / u.odds.draw + 1.0 / u.odds.away;
            assert!(
                (1.02..1.09).contains(&overround),
                "overround {overround} for {u:?}"
            );
        }
        assert_eq!(last_version.len(), 6);
    }

    #[test]
    fn versions_start_above_the_base_and_the_image_shows_current_state() {
        let mut feed = OddsFeed::new(1, 3, &[], 1_000_000);
        let image = feed.image(Utc::now());
        assert_eq!(image.len(), 3);
        assert!(image.iter().all(|u| u.version == 1_000_001));
        let next = feed.next_update(Utc::now());
        assert_eq!(next.version, 1_000_002);
        let after = feed.image(Utc::now());
        let same = after.iter().find(|u| u.event_id == next.event_id).unwrap();
        assert_eq!((same.version, same.odds), (next.version, next.odds));
        // A process started later gets a larger base, so its first quotes are newer.
        assert!(clock_version_base() > 1_700_000_000_000_000);
    }

    #[test]
    fn every_event_is_quoted_in_every_market_with_one_version_sequence() {
        let markets = [Market::MatchResult, Market::HalfTimeResult];
        let mut feed = OddsFeed::new(5, 3, &markets, 100);
        let image = feed.image(Utc::now());
        assert_eq!(image.len(), 6, "3 events × 2 markets");
        let mut seen = std::collections::HashMap::new();
        let mut last_per_event = std::collections::HashMap::new();
        for _ in 0..2_000 {
            let u = feed.next_update(Utc::now());
            let prev = last_per_event
                .insert(u.event_id.clone(), u.version)
                .unwrap_or(101);
            assert_eq!(u.version, prev + 1, "one sequence per event across markets");
            seen.insert((u.event_id.clone(), u.market.clone()), u);
        }
        assert_eq!(seen.len(), 6, "both markets are quoted");
        // The image holds each market's own latest quote.
        for u in feed.image(Utc::now()) {
            let last = &seen[&(u.event_id.clone(), u.market.clone())];
            assert_eq!((u.version, u.odds), (last.version, last.odds));
        }
    }

    #[test]
    fn seed_fixtures_come_first() {
        let mut feed = OddsFeed::new(3, 5, &[], 0);
        let names: std::collections::BTreeMap<_, _> = (0..200)
            .map(|_| feed.next_update(Utc::now()))
            .map(|u| (u.event_id, (u.home_team, u.away_team)))
            .collect();
        assert_eq!(names["MATCH_002"], ("Liverpool".into(), "Everton".into()));
        assert!(names.contains_key("MATCH_005"));
    }
}
