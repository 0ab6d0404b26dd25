//! Turning raw input into an accepted update, or into a reason for the dead-letter queue.
//!
//! Ingest and the processor both decode untrusted bytes; they share this one decision so that
//! the same input is accepted or rejected, with the same reason code, at either stage.

use crate::update::{OddsUpdate, ValidationError};

/// Largest frame or record accepted as an update. Real updates are ~250 bytes; anything near
/// this size is garbage or an attack and is dead-lettered rather than parsed.
pub const MAX_UPDATE_BYTES: usize = 16 * 1024;

/// Why input was not accepted as an [`OddsUpdate`].
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RejectReason {
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    #[error("binary frame: updates are JSON text")]
    BinaryFrame,
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    Oversize { len: usize, max: usize },
    #[error("invalid update: {0}")]
    Invalid(#[from] ValidationError),
}

impl RejectReason {
    /// Stable machine-readable code, used as the DLQ reason header and as a metrics label.
    pub fn code(&self) -> &'static str {
        match self {
            RejectReason::InvalidJson(_) => "invalid_json",
            RejectReason::BinaryFrame => "binary_frame",
            RejectReason::Oversize { .. } => "oversize",
            RejectReason::Invalid(_) => "invalid_update",
        }
    }

    /// Every code [`RejectReason::code`] can return, for pre-registering metric labels.
    pub const CODES: [&'static str; 4] =
        ["invalid_json", "binary_frame", "oversize", "invalid_update"];
}

/// Reason code of a valid update that storage refused for good (a data exception or a
/// constraint violation): the processor dead-letters it with the database's message.
pub const STORAGE_REJECTED: &str = "storage_rejected";

/// Decodes and validates one update from raw bytes.
pub fn parse_update(payload: &[u8]) -> Result<OddsUpdate, RejectReason> {
    if payload.len() > MAX_UPDATE_BYTES {
        return Err(RejectReason::Oversize {
            len: payload.len(),
            max: MAX_UPDATE_BYTES,
        });
    }
    let update: OddsUpdate =
        serde_json::from_slice(payload).map_err(|e| RejectReason::InvalidJson(e.to_string()))?;
    update.validate()?;
    Ok(update)
}
