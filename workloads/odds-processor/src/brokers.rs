//! Whether the consumer can reach Kafka, as librdkafka sees it.
//!
//! librdkafka hides broker outages from its user: it reconnects on its own, and a consumer
//! whose brokers are all gone simply receives nothing. Readiness must not say "ready" then, so
//! it follows two reports: the `all brokers down` error (at once, when the last connection
//! drops) and the statistics (every `statistics.interval.ms`), which list each broker's
//! connection state and so also tell when one is back. A record received is no evidence: it
//! may have been fetched before the outage.

use crate::checks::CHECK_KAFKA;
use odds_runtime::Readiness;
use rdkafka::statistics::Statistics;
use std::sync::atomic::{AtomicBool, Ordering};

/// Connection states in which a broker answers requests.
const ANSWERING: [&str; 2] = ["UP", "UPDATE"];

/// The `kafka` readiness check, kept by librdkafka's reports.
#[derive(Debug)]
pub struct BrokerHealth {
    reachable: AtomicBool,
    readiness: Readiness,
}

impl BrokerHealth {
    /// Starts reachable (the client was just created and is connecting): an outage shows
    /// within moments as the `all brokers down` error.
    pub fn new(readiness: Readiness) -> BrokerHealth {
        readiness.set(CHECK_KAFKA, true);
        BrokerHealth {
            reachable: AtomicBool::new(true),
            readiness,
        }
    }

    /// librdkafka reported that no broker connection is up.
    pub fn all_down(&self, reason: &str) {
        if self.reachable.swap(false, Ordering::Relaxed) {
            self.readiness.set(CHECK_KAFKA, false);
            tracing::warn!(reason, "every Kafka broker is unreachable; not ready");
        }
    }

    /// Follows the broker states of a statistics report.
    pub fn observe(&self, statistics: &Statistics) {
        if any_broker_answers(statistics) {
            if !self.reachable.swap(true, Ordering::Relaxed) {
                self.readiness.set(CHECK_KAFKA, true);
                tracing::info!("a Kafka broker is reachable again; ready");
            }
        } else {
            self.all_down("no broker connection is up in librdkafka's statistics");
        }
    }
}

/// Whether a real broker (not librdkafka's internal one) has a working connection.
pub fn any_broker_answers(statistics: &Statistics) -> bool {
    statistics
        .brokers
        .values()
        .any(|b| b.source != "internal" && ANSWERING.contains(&b.state.as_str()))
}
