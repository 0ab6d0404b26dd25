//! How big a dead letter may get, the same at every stage that writes one.
//!
//! A rejected record can be anything a supplier or a producer sent, up to whatever the source
//! topic allowed; the DLQ producer has its own, usually smaller, limit. A dead letter that the
//! DLQ refuses for its size would stop its stage for good, so each one is bounded: the payload
//! keeps its beginning, with the original size and a digest of the whole beside it, and the
//! key and the detail are cut to a few hundred bytes.

use sha2::{Digest, Sha256};

/// Most bytes of a rejected payload kept in its dead letter.
pub const DLQ_MAX_PAYLOAD: usize = 64 * 1024;
/// Most bytes of a rejected record's key kept in its dead letter.
pub const DLQ_MAX_KEY: usize = 1024;
/// Most bytes of a rejection's detail kept in its dead letter.
pub const DLQ_MAX_DETAIL: usize = 1024;

/// A rejected payload as its dead letter carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BoundedPayload<'a> {
    /// The first [`DLQ_MAX_PAYLOAD`] bytes at most.
    pub kept: &'a [u8],
    /// The size of the whole payload (the `odds-original-bytes` header).
    pub original_bytes: usize,
    /// Hex SHA-256 of the whole payload (the `odds-original-sha256` header).
    pub sha256: String,
}

/// Bounds `payload` for the DLQ (see the module doc).
pub fn bound_payload(payload: &[u8]) -> BoundedPayload<'_> {
    BoundedPayload {
        kept: &payload[..payload.len().min(DLQ_MAX_PAYLOAD)],
        original_bytes: payload.len(),
        sha256: sha256_hex(payload),
    }
}

/// Hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The first [`DLQ_MAX_KEY`] bytes of a key.
pub fn bound_key(key: &[u8]) -> &[u8] {
    &key[..key.len().min(DLQ_MAX_KEY)]
}

/// `detail` cut to at most [`DLQ_MAX_DETAIL`] bytes, on a character boundary.
pub fn bound_detail(detail: &str) -> &str {
    if detail.len() <= DLQ_MAX_DETAIL {
        return detail;
    }
    let mut end = DLQ_MAX_DETAIL;
    while !detail.is_char_boundary(end) {
        end -= 1;
    }
    &detail[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_large_payload_keeps_its_beginning_size_and_digest() {
        let payload = vec![b'x'; DLQ_MAX_PAYLOAD * 3];
        let bounded = bound_payload(&payload);
        assert_eq!(bounded.kept.len(), DLQ_MAX_PAYLOAD);
        assert_eq!(bounded.original_bytes, DLQ_MAX_PAYLOAD * 3);
        assert_eq!(bounded.sha256.len(), 64);
        assert_ne!(bounded.sha256, bound_payload(bounded.kept).sha256);
        let small = bound_payload(b"abc");
        assert_eq!(small.kept, b"abc");
        // The well-known SHA-256 of "abc".
        assert_eq!(
            small.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn keys_and_details_are_cut_on_boundaries() {
        assert_eq!(bound_key(&[1; 5000]).len(), DLQ_MAX_KEY);
        assert_eq!(bound_detail("short"), "short");
        let wide = "é".repeat(DLQ_MAX_DETAIL);
        let cut = bound_detail(&wide);
        assert!(cut.len() <= DLQ_MAX_DETAIL && cut.len() >= DLQ_MAX_DETAIL - 1);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
