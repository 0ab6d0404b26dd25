//! The `/ws/odds` protocol: JSON text frames tagged by `"type"`.
//!
//! Envelope fields are camelCase (`eventId`), matching what browser clients already send
//! (`{"type":"subscribe","eventId":"MATCH_002"}`); the embedded update keeps the event
//! contract's snake_case so it is byte-for-byte what the pipeline carries.

use crate::update::OddsUpdate;
use serde::{Deserialize, Serialize};

/// `eventId` that subscribes to (or unsubscribes from) every event.
pub const ALL_EVENTS: &str = "*";

/// Largest conflation interval a client may ask for (`conflateMs`), in milliseconds.
pub const MAX_CONFLATE_MS: u64 = 60_000;

/// What a client may send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Subscribe {
        #[serde(rename = "eventId")]
        event_id: String,
        /// Asks for conflation (as Betfair's stream API's `conflateMs`): at most one write
        /// per interval, carrying the newest version of each (event, market) that changed.
        /// Applies to the whole connection; a later subscribe carrying it replaces it, `0`
        /// turns it off. Without it the server sends every version to a client that keeps up.
        #[serde(
            rename = "conflateMs",
            default,
            skip_serializing_if = "Option::is_none"
        )]
        conflate_ms: Option<u64>,
    },
    Unsubscribe {
        #[serde(rename = "eventId")]
        event_id: String,
    },
    Ping,
}

/// What the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Subscribed {
        #[serde(rename = "eventId")]
        event_id: String,
    },
    Unsubscribed {
        #[serde(rename = "eventId")]
        event_id: String,
    },
    /// Current odds of one event in one market: one per market right after `subscribed`.
    Snapshot {
        data: OddsUpdate,
    },
    /// A newer version of a market of an event the client follows (versions rise strictly
    /// per (event, market)).
    Odds {
        data: OddsUpdate,
    },
    Pong,
    /// Whether live updates are flowing. Sent when they stop (`live: false`, with the
    /// reason; again if the reason changes) and when they resume (`live: true`), and once
    /// right after the connection
    /// opens if they are stopped at that moment. While not live the server sends no `odds`
    /// frames; on resume it first re-reads every followed event from Postgres and sends what
    /// is newer than what the client has, so a client never waits on a silent socket.
    Status {
        live: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    Error {
        code: ErrorCode,
        message: String,
        #[serde(rename = "eventId", default, skip_serializing_if = "Option::is_none")]
        event_id: Option<String>,
    },
}

/// Machine-readable error codes of `error` messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame is not a JSON object.
    BadJson,
    /// `type` is missing or not one of the client messages.
    UnknownType,
    /// A known type with missing or wrong fields.
    InvalidMessage,
    /// Binary frames are not part of the protocol.
    BinaryNotSupported,
    /// The connection already follows the maximum number of events.
    TooManySubscriptions,
    /// The frame exceeds the server's message size limit.
    MessageTooLarge,
    /// The event id is not a valid id.
    InvalidEventId,
    /// No odds are known for the event.
    UnknownEvent,
    /// Neither cache nor database could answer.
    Unavailable,
}

/// A client frame that could not be understood.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ClientMessage {
    /// Parses a client text frame, telling apart bad JSON, an unknown type and bad fields.
    pub fn parse(text: &str) -> Result<ClientMessage, ProtocolError> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| ProtocolError {
            code: ErrorCode::BadJson,
            message: format!("frame is not valid JSON: {e}"),
        })?;
        let Some(object) = value.as_object() else {
            return Err(ProtocolError {
                code: ErrorCode::BadJson,
                message: "frame must be a JSON object".into(),
            });
        };
        let Some(kind) = object
            .get("type")
            .and_then(|t| t.as_str())
            .map(str::to_owned)
        else {
            return Err(ProtocolError {
                code: ErrorCode::UnknownType,
                message: "missing string field \"type\"".into(),
            });
        };
        if !matches!(kind.as_str(), "subscribe" | "unsubscribe" | "ping") {
            return Err(ProtocolError {
                code: ErrorCode::UnknownType,
                message: format!("unknown type {kind:?}; expected subscribe, unsubscribe or ping"),
            });
        }
        let message = serde_json::from_value(value).map_err(|e| ProtocolError {
            code: ErrorCode::InvalidMessage,
            message: format!("invalid {kind} message: {e}"),
        })?;
        if let ClientMessage::Subscribe {
            conflate_ms: Some(ms),
            ..
        } = &message
        {
            if *ms > MAX_CONFLATE_MS {
                return Err(ProtocolError {
                    code: ErrorCode::InvalidMessage,
                    message: format!(
                        "invalid subscribe message: conflateMs {ms} exceeds {MAX_CONFLATE_MS}"
                    ),
                });
            }
        }
        Ok(message)
    }
}

impl ServerMessage {
    /// JSON text of this message. Serializing these types cannot fail (string keys only).
    #[allow(clippy::expect_used)]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("ServerMessage serialization is infallible")
    }

    /// The `odds` frame for an update already encoded as JSON, so a fan-out can encode each
    /// update once and share the text among all subscribers.
    pub fn odds_frame(update_json: &str) -> String {
        format!(r#"{{"type":"odds","data":{update_json}}}"#)
    }

    /// The `snapshot` frame for an update already encoded as JSON.
    pub fn snapshot_frame(update_json: &str) -> String {
        format!(r#"{{"type":"snapshot","data":{update_json}}}"#)
    }

    /// A `status` message: live updates flowing, or stopped for `reason`.
    pub fn status(reason: Option<&str>) -> Self {
        ServerMessage::Status {
            live: reason.is_none(),
            reason: reason.map(str::to_owned),
        }
    }

    pub fn error(code: ErrorCode, message: impl Into<String>, event_id: Option<&str>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
            event_id: event_id.map(str::to_owned),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ServerMessage;

    #[test]
    fn status_says_whether_updates_flow_and_why_not() {
        assert_eq!(
            ServerMessage::status(Some("Redis unreachable")).to_json(),
            r#"{"type":"status","live":false,"reason":"Redis unreachable"}"#
        );
        assert_eq!(
            ServerMessage::status(None).to_json(),
            r#"{"type":"status","live":true}"#
        );
        let parsed: ServerMessage =
            serde_json::from_str(r#"{"type":"status","live":true}"#).unwrap_or(ServerMessage::Pong);
        assert_eq!(parsed, ServerMessage::status(None));
    }

    #[test]
    fn subscribe_takes_an_optional_bounded_conflation_interval() {
        use super::{ClientMessage, ErrorCode};
        let plain = ClientMessage::parse(r#"{"type":"subscribe","eventId":"E1"}"#);
        assert_eq!(
            plain,
            Ok(ClientMessage::Subscribe {
                event_id: "E1".into(),
                conflate_ms: None
            })
        );
        let asked = ClientMessage::parse(r#"{"type":"subscribe","eventId":"E1","conflateMs":250}"#);
        assert_eq!(
            asked,
            Ok(ClientMessage::Subscribe {
                event_id: "E1".into(),
                conflate_ms: Some(250)
            })
        );
        for bad in [
            r#""conflateMs":60001"#,
            r#""conflateMs":-1"#,
            r#""conflateMs":"5""#,
        ] {
            let text = format!(r#"{{"type":"subscribe","eventId":"E1",{bad}}}"#);
            let error = ClientMessage::parse(&text).err().map(|e| e.code);
            assert_eq!(error, Some(ErrorCode::InvalidMessage), "{bad}");
        }
    }
}
