//! What the processors' heartbeats (and the updates themselves) say about the pipeline
//! upstream of Redis: whether prices can move at all.
//!
//! Pure state, fed by the subscriber and read by [`crate::feed::Feed`]: a beat or an update
//! is a sign of life; none for the heartbeat timeout means no processor runs (or none can
//! reach Redis), a beat can say its processor is stuck (Kafka or Postgres out), and records
//! that stopped arriving at every processor for the silence limit mean the supplier went
//! quiet. Each is a reason clients are given, constant while it holds so they are told once.

use odds_contracts::heartbeat::Heartbeat;
use std::collections::HashMap;
use std::time::Duration;
use tokio::time::Instant;

/// How long a processor is remembered after its last beat when the heartbeat watch is off.
const FORGET_WHEN_OFF: Duration = Duration::from_secs(30);

/// A processor as its beats describe it.
#[derive(Debug, Clone)]
pub struct Processor {
    /// When its last beat arrived.
    pub seen: Instant,
    /// When it started (arrival minus its uptime).
    pub started: Instant,
    pub beat: Heartbeat,
}

/// Signs of life of the pipeline upstream of Redis.
#[derive(Debug)]
pub struct Upstream {
    heartbeat_timeout: Duration,
    max_silence: Duration,
    /// The last beat or update, or when listening (re)started: a grace for the first beat.
    last_sign: Instant,
    /// When the newest record known was read from Kafka (by any processor), or an update
    /// arrived here, or listening (re)started.
    last_flow: Instant,
    processors: HashMap<String, Processor>,
}

impl Upstream {
    /// Zero durations turn the heartbeat watch or the silence limit off.
    pub fn new(heartbeat_timeout: Duration, max_silence: Duration, now: Instant) -> Upstream {
        Upstream {
            heartbeat_timeout,
            max_silence,
            last_sign: now,
            last_flow: now,
            processors: HashMap::new(),
        }
    }

    /// The subscription was (re-)established: what happened while away was not heard, so
    /// every limit starts again rather than firing at once.
    pub fn listening(&mut self, now: Instant) {
        self.last_sign = now;
        self.last_flow = self.last_flow.max(now);
    }

    /// A beat arrived; returns the processor as it was known before (if it was).
    pub fn beat(&mut self, beat: Heartbeat, now: Instant) -> Option<Processor> {
        if beat.leaving {
            return self.processors.remove(&beat.processor);
        }
        self.last_sign = now;
        let read = now
            .checked_sub(Duration::from_millis(beat.idle_ms))
            .unwrap_or(now);
        self.last_flow = self.last_flow.max(read);
        let started = now
            .checked_sub(Duration::from_millis(beat.uptime_ms))
            .unwrap_or(now);
        let processor = Processor {
            seen: now,
            started,
            beat,
        };
        self.processors
            .insert(processor.beat.processor.clone(), processor)
    }

    /// An update arrived: a processor wrote it to Postgres, so records flow right now and
    /// Postgres (one for all processors) takes writes again, whatever the last beats said; a
    /// Kafka stall is a processor's own and waits for its next beat.
    pub fn update(&mut self, now: Instant) {
        self.last_sign = now;
        self.last_flow = now;
        for processor in self.processors.values_mut() {
            processor.beat.postgres = true;
        }
    }

    /// Processors heard from lately.
    pub fn processors(&self) -> impl Iterator<Item = &Processor> {
        self.processors.values()
    }

    pub fn processor(&self, id: &str) -> Option<&Processor> {
        self.processors.get(id)
    }

    /// Why prices cannot move, if they cannot. Forgets processors that stopped beating.
    pub fn verdict(&mut self, now: Instant) -> Option<String> {
        let timeout = self.heartbeat_timeout;
        // With the watch off, beats still tell who repaired the cache: keep them a while.
        let keep = if timeout.is_zero() {
            FORGET_WHEN_OFF
        } else {
            timeout
        };
        self.processors
            .retain(|_, p| now.saturating_duration_since(p.seen) < keep);
        if !timeout.is_zero() {
            if now.saturating_duration_since(self.last_sign) >= timeout {
                return Some(format!(
                    "pipeline stopped: no heartbeat from any processor for {} ms",
                    timeout.as_millis()
                ));
            }
            let mut stalls: Vec<&str> = self
                .processors
                .values()
                .filter_map(|p| p.beat.stall())
                .collect();
            stalls.sort_unstable();
            if let Some(stall) = stalls.first() {
                return Some(format!("pipeline stalled: {stall}"));
            }
        }
        let silence = self.max_silence;
        if !silence.is_zero() && now.saturating_duration_since(self.last_flow) >= silence {
            return Some(format!(
                "no odds from upstream for {} ms: the supplier is silent",
                silence.as_millis()
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn beat(id: &str, idle_ms: u64) -> Heartbeat {
        Heartbeat {
            processor: id.into(),
            uptime_ms: 60_000,
            idle_ms,
            postgres: true,
            kafka: true,
            cache_fresh: true,
            cache_repairs: 1,
            leaving: false,
        }
    }

    /// A beat of `id` saying whether it reaches Postgres and Kafka.
    fn stalled(id: &str, postgres: bool, kafka: bool) -> Heartbeat {
        Heartbeat {
            postgres,
            kafka,
            ..beat(id, 10)
        }
    }

    #[test]
    fn silence_stalls_and_lost_beats_each_have_their_reason() {
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        // What the verdict at `ms` says; empty while prices can move.
        let says = |up: &mut Upstream, ms| up.verdict(at(ms)).unwrap_or_default();
        let mut up = Upstream::new(Duration::from_secs(3), Duration::from_secs(30), t0);
        assert_eq!(up.verdict(at(2999)), None, "a grace for the first beat");
        assert!(says(&mut up, 3000).contains("no heartbeat"));
        up.beat(beat("a", 10), at(3000));
        assert_eq!(up.verdict(at(3000)), None);

        up.beat(stalled("b", false, true), at(4000));
        assert!(says(&mut up, 4000).contains("cannot write to Postgres"));
        // An update says Postgres takes writes again before b's next beat does.
        up.update(at(4100));
        assert_eq!(up.verdict(at(4100)), None);
        up.beat(stalled("b", true, false), at(4200));
        assert!(says(&mut up, 4200).contains("cannot reach Kafka"));
        up.update(at(4300));
        assert!(up.verdict(at(4300)).is_some(), "a Kafka stall is b's own");
        // b stops beating; a goes on: b is forgotten after the timeout.
        up.beat(beat("a", 10), at(6000));
        assert!(up.verdict(at(6500)).is_some());
        up.beat(beat("a", 10), at(7300));
        assert_eq!(up.verdict(at(7300)), None);

        // Beats go on but no processor has read a record for 30 s.
        up.beat(beat("a", 30_000), at(40_000));
        assert!(says(&mut up, 40_000).contains("supplier is silent"));
        up.update(at(40_100));
        assert_eq!(up.verdict(at(40_100)), None);

        // A leaving processor is forgotten at once; then nothing beats.
        up.beat(
            Heartbeat {
                leaving: true,
                ..beat("a", 0)
            },
            at(41_000),
        );
        assert_eq!(up.processors().count(), 0);
        assert!(says(&mut up, 43_100).contains("no heartbeat"));

        let mut off = Upstream::new(Duration::ZERO, Duration::ZERO, t0);
        assert_eq!(off.verdict(at(1_000_000)), None);
    }
}
