//! Dead-lettering: records that are not valid updates go to `odds_updates_dlq`.
//!
//! A poison record must never block its partition, and must never vanish either: it is
//! produced to the DLQ with its original key and bytes, the reason code and detail, and where
//! it came from (topic/partition/offset headers), and the batch's offsets are committed only
//! after the DLQ acknowledged it.
//!
//! Every dead letter is bounded (see [`odds_contracts::dead_letter`]): a record larger than the
//! DLQ producer's limit keeps its beginning, its size and its digest, so its size alone never
//! makes the DLQ refuse it. A refusal that no retry can change (the DLQ topic missing or
//! denied, a limit below even the bounded record) is [`DlqError::is_permanent`]: the processor
//! then stops and says so rather than hold its partitions paused forever.

use crate::batch::{Rejection, SourceRecord};
use futures_util::future::try_join_all;
use odds_contracts::dead_letter::{bound_detail, bound_key, bound_payload};
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

impl DlqError {
    /// Whether the DLQ refused the record for good: the same record (or any record, for a
    /// missing or denied topic) would be refused again however often it is retried. A
    /// timeout, a broker away or a full queue are not: they pass.
    pub fn is_permanent(&self) -> bool {
        self.0.rdkafka_error_code().is_some_and(refuses_for_good)
    }
}

/// Error codes of a produce that no retry can change.
pub fn refuses_for_good(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as Code;
    matches!(
        code,
        Code::MessageSizeTooLarge
            | Code::InvalidMessageSize
            | Code::MessageBatchTooLarge
            | Code::UnknownTopic
            | Code::UnknownTopicOrPartition
            | Code::UnknownPartition
            | Code::InvalidTopic
            | Code::TopicAuthorizationFailed
            | Code::ClusterAuthorizationFailed
            | Code::PolicyViolation
            | Code::InvalidRequiredAcks
            | Code::UnsupportedForMessageFormat
            | Code::InvalidRecord
            | Code::Fatal
    )
}

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
            let payload = record.payload.as_deref().map(bound_payload);
            let mut headers = OwnedHeaders::new()
                .insert(header(dlq_headers::REASON, why.code))
                .insert(header(dlq_headers::DETAIL, bound_detail(&why.detail)))
                .insert(header(dlq_headers::REJECTED_AT, &rejected_at))
                .insert(header(dlq_headers::STAGE, STAGE))
                .insert(header(dlq_headers::SOURCE_TOPIC, &record.topic))
                .insert(header(dlq_headers::SOURCE_PARTITION, &partition))
                .insert(header(dlq_headers::SOURCE_OFFSET, &offset));
            if let Some(payload) = &payload {
                headers = headers
                    .insert(header(
                        dlq_headers::ORIGINAL_BYTES,
                        &payload.original_bytes.to_string(),
                    ))
                    .insert(header(dlq_headers::ORIGINAL_SHA256, &payload.sha256));
            }
            let mut out = FutureRecord::<[u8], [u8]>::to(&self.topic).headers(headers);
            if let Some(key) = &record.key {
                out = out.key(bound_key(key));
            }
            if let Some(payload) = &payload {
                out = out.payload(payload.kept);
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
