//! Dead-lettering: records that are not valid updates go to `odds_updates_dlq`.
//!
//! A poison record must never block its partition, and must never vanish either: it is
//! produced to the DLQ with its original key and bytes, the reason code and detail, and where
//! it came from (topic/partition/offset headers), and the batch's offsets are committed only
//! after the DLQ acknowledged it.

use crate::batch::{Rejection, SourceRecord};
use futures_util::future::try_join_all;
use odds_contracts::names::dlq_headers;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::ClientConfig;
use std::time::Duration;

/// The stage name written into the DLQ's stage header.
pub const STAGE: &str = "odds-processor";

/// How long one DLQ delivery may take before the batch is retried.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
#[error("dead-letter queue: {0}")]
pub struct DlqError(#[from] KafkaError);

pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
}

impl DeadLetters {
    /// A producer for `topic` with the given client properties (see
    /// [`crate::config::ProcessorConfig::dlq_producer_properties`]).
    pub fn new(topic: &str, props: &[(String, String)]) -> Result<Self, DlqError> {
        let mut config = ClientConfig::new();
        for (name, value) in props {
            config.set(name, value);
        }
        Ok(DeadLetters {
            producer: config.create()?,
            topic: topic.to_owned(),
        })
    }

    /// Produces every rejected record and waits until all are acknowledged.
    pub async fn send_all(&self, rejected: &[(SourceRecord, Rejection)]) -> Result<(), DlqError> {
        let rejected_at = chrono::Utc::now().to_rfc3339();
        let sends = rejected.iter().map(|(record, why)| {
            let partition = record.partition.to_string();
            let offset = record.offset.to_string();
            let headers = OwnedHeaders::new()
                .insert(header(dlq_headers::REASON, why.code))
                .insert(header(dlq_headers::DETAIL, &why.detail))
                .insert(header(dlq_headers::REJECTED_AT, &rejected_at))
                .insert(header(dlq_headers::STAGE, STAGE))
                .insert(header(dlq_headers::SOURCE_TOPIC, &record.topic))
                .insert(header(dlq_headers::SOURCE_PARTITION, &partition))
                .insert(header(dlq_headers::SOURCE_OFFSET, &offset));
            let mut out = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
            if let Some(key) = &record.key {
                out = out.key(key.as_slice());
            }
            if let Some(payload) = &record.payload {
                out = out.payload(payload.as_slice());
            }
            // Enqueue now (the record borrows this iteration's data), await delivery below.
            let delivery = self.producer.send_result(out).map_err(|(e, _)| DlqError(e));
            async move {
                let delivered = tokio::time::timeout(DELIVERY_TIMEOUT, delivery?)
                    .await
                    .map_err(|_| {
                        DlqError(KafkaError::MessageProduction(
                            RDKafkaErrorCode::MessageTimedOut,
                        ))
                    })?;
                match delivered {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err((e, _))) => Err(DlqError(e)),
                    Err(_canceled) => Err(DlqError(KafkaError::Canceled)),
                }
            }
        });
        try_join_all(sends).await?;
        Ok(())
    }
}

fn header<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}
