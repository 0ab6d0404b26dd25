//! WebSocket frames as the server writes them: bytes built once and copied into each
//! client's write buffer.
//!
//! Server frames are never masked (RFC 6455 §5.1), so an update's `odds` frame is the same
//! bytes for every subscriber: the fan-out builds it once per update and appends it to the
//! buffers of all the clients it reaches, then writes each buffer with one syscall. Frames go
//! out whole (FIN set, no fragmentation); the server writes no extensions.

const FIN: u8 = 0x80;
pub const OP_TEXT: u8 = 0x1;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// Appends a frame header for a payload of `len` bytes.
fn header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(FIN | opcode);
    if len < 126 {
        // Fits in the 7-bit length field.
        out.push(len as u8);
    } else if let Ok(short) = u16::try_from(len) {
        out.push(126);
        out.extend_from_slice(&short.to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Appends a complete frame whose payload is the concatenation of `parts`.
pub fn append(out: &mut Vec<u8>, opcode: u8, parts: &[&[u8]]) {
    let len = parts.iter().map(|p| p.len()).sum();
    out.reserve(len + 10);
    header(out, opcode, len);
    for part in parts {
        out.extend_from_slice(part);
    }
}

/// A complete text frame.
pub fn text(payload: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    append(&mut out, OP_TEXT, &[payload.as_bytes()]);
    out
}

/// Appends the `{"type":"<kind>","data":<update>}` frame of an update already encoded as JSON,
/// without building the text first.
pub fn append_update(out: &mut Vec<u8>, kind: &str, update_json: &str) {
    append(
        out,
        OP_TEXT,
        &[
            br#"{"type":""#,
            kind.as_bytes(),
            br#"","data":"#,
            update_json.as_bytes(),
            b"}",
        ],
    );
}

/// A close frame with a status code and a reason (at most 123 bytes, as control frames carry
/// at most 125).
pub fn close(code: u16, reason: &str) -> Vec<u8> {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(end + 4);
    append(
        &mut out,
        OP_CLOSE,
        &[&code.to_be_bytes(), &reason.as_bytes()[..end]],
    );
    out
}

/// A ping or pong frame (payload cut at 125 bytes, the control-frame limit).
pub fn control(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len().min(125) + 2);
    append(&mut out, opcode, &[&payload[..payload.len().min(125)]]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    /// What tungstenite itself writes for the same text: the reference framing.
    fn reference(payload: &str) -> Vec<u8> {
        let mut out = Vec::new();
        Frame::message(payload.to_owned(), OpCode::Data(Data::Text), true)
            .format(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn text_frames_match_tungstenite_at_every_length_encoding() {
        for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
            let payload = "x".repeat(len);
            assert_eq!(text(&payload), reference(&payload), "length {len}");
        }
        let mut out = Vec::new();
        append_update(&mut out, "odds", r#"{"v":1}"#);
        assert_eq!(out, reference(r#"{"type":"odds","data":{"v":1}}"#));
    }

    #[test]
    fn close_reason_is_cut_at_a_char_boundary_within_the_control_limit() {
        let frame = close(1008, &"é".repeat(100));
        assert_eq!(frame[0], 0x88);
        let len = usize::from(frame[1]);
        assert!(len <= 125, "{len}");
        assert_eq!(&frame[2..4], &1008u16.to_be_bytes());
        assert!(std::str::from_utf8(&frame[4..]).is_ok());
    }
}
