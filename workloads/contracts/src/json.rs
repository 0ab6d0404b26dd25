//! The small JSON messages stages leave for each other in Redis (cache status reports,
//! heartbeats, freshness reports), written and read one way.

use serde::de::DeserializeOwned;
use serde::Serialize;

/// A message that crosses a process boundary as JSON text.
pub trait JsonMessage: Serialize + DeserializeOwned {
    /// JSON text. Serializing a message cannot fail: messages hold only strings, numbers,
    /// booleans and timestamps, under string keys.
    #[allow(clippy::expect_used)]
    fn to_json(&self) -> String {
        serde_json::to_string(self).expect("message serialization is infallible")
    }

    /// Parses a message; `None` for anything else (the reader logs it).
    fn parse(bytes: &[u8]) -> Option<Self> {
        serde_json::from_slice(bytes).ok()
    }
}
