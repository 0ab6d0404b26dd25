//! The W3C `traceparent` header (Trace Context, level 1): how a span's context crosses Kafka
//! and Redis between stages.
//!
//! `00-<32 hex trace id>-<16 hex span id>-<2 hex flags>`. Written and read here rather than
//! through the SDK's propagator, which works on header maps: a Kafka header and a suffix of a
//! pub/sub message are one value each, and reading one must not allocate.

use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

const LEN: usize = 55;

/// The `traceparent` value of `context`.
pub fn format_traceparent(context: &SpanContext) -> String {
    format!(
        "00-{}-{}-{:02x}",
        context.trace_id(),
        context.span_id(),
        context.trace_flags().to_u8()
    )
}

/// The remote span context a `traceparent` value names, or `None` when it is not one (wrong
/// length or version, upper-case or non-hex digits, an all-zero id). Versions above `00` are
/// read as `00` when they have its length, as the specification asks.
pub fn parse_traceparent(value: &[u8]) -> Option<SpanContext> {
    if value.len() != LEN || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let version = hex(&value[0..2])?;
    if version == 0xff {
        return None;
    }
    let trace_id = TraceId::from(hex(&value[3..35])?);
    let span_id = SpanId::from(u64::try_from(hex(&value[36..52])?).ok()?);
    let flags = TraceFlags::new(u8::try_from(hex(&value[53..55])?).ok()?);
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    Some(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags.to_u8() & TraceFlags::SAMPLED.to_u8()),
        true,
        TraceState::NONE,
    ))
}

/// Lower-case hex digits (at most 32) as a number.
fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |value, digit| {
        let nibble = match digit {
            b'0'..=b'9' => digit - b'0',
            b'a'..=b'f' => digit - b'a' + 10,
            _ => return None,
        };
        Some(value << 4 | u128::from(nibble))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::propagation::TextMapPropagator;
    use opentelemetry::trace::TraceContextExt;
    use opentelemetry::Context;
    use opentelemetry_sdk::propagation::TraceContextPropagator;
    use std::collections::HashMap;

    const SAMPLED: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn round_trips_and_agrees_with_the_sdk_propagator() {
        let parsed = parse_traceparent(SAMPLED.as_bytes());
        let Some(context) = parsed else {
            panic!("the specification's example must parse");
        };
        assert!(context.is_sampled() && context.is_remote());
        assert_eq!(format_traceparent(&context), SAMPLED);
        let mut carrier = HashMap::new();
        let propagator = TraceContextPropagator::new();
        propagator.inject_context(
            &Context::new().with_remote_span_context(context.clone()),
            &mut carrier,
        );
        assert_eq!(
            carrier.get("traceparent").map(String::as_str),
            Some(SAMPLED)
        );
        let extracted = propagator.extract(&carrier);
        assert_eq!(extracted.span().span_context(), &context);
    }

    #[test]
    fn anything_else_is_refused() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
        ];
        for value in bad {
            assert_eq!(parse_traceparent(value.as_bytes()), None, "{value}");
        }
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        assert!(parse_traceparent(unsampled.as_bytes()).is_some_and(|c| !c.is_sampled()));
    }
}
