//! W3C trace context (`traceparent`), carried by every event from the command that caused it,
//! through the outbox and JetStream, to every consumer.
//!
//! An event's `traceparent` names the span that produced it: the command's span, or the span of
//! the consumer whose reaction emitted it. A consumer's span for an event is a child of that. Its
//! id is derived from the event id and the consuming context, so the id is known without passing
//! state around: the reaction's events (written in the batch's transaction) name it as their
//! parent, and a redelivery of the same event gets the same span id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The header W3C trace context travels in.
pub const TRACEPARENT: &str = "traceparent";

/// A span's place in a trace: the trace id, the span id, and whether it was sampled.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct TraceContext {
    /// 16 bytes, never all zero.
    pub trace_id: [u8; 16],
    /// 8 bytes, never all zero.
    pub span_id: [u8; 8],
    /// Bit 0: sampled.
    pub flags: u8,
}

/// Why a `traceparent` value was not accepted. Such a value is ignored (a new trace starts), as
/// the W3C recommendation says; the event itself is not refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid traceparent: {0}")]
pub struct TraceparentError(&'static str);

impl TraceContext {
    /// A new trace with a random root span, sampled.
    pub fn new_root() -> TraceContext {
        let bytes = *uuid::Uuid::new_v4().as_bytes();
        TraceContext { trace_id: bytes, span_id: random_span_id(), flags: 1 }
    }

    /// The trace of an event sent without trace context: its id is the event's id.
    pub fn for_untraced(event_id: &[u8; 16]) -> TraceContext {
        TraceContext { trace_id: *event_id, span_id: derived_span_id(&[event_id, b"/producer"]), flags: 1 }
    }

    /// A child span with a random id in the same trace.
    pub fn child(&self) -> TraceContext {
        TraceContext { span_id: random_span_id(), ..*self }
    }

    /// The span in which `context` consumes the event `event_id`: a child in the same trace whose
    /// id depends only on the two, so every part of Carrier computes the same one.
    pub fn consumer_span(&self, event_id: &str, context: &str) -> TraceContext {
        TraceContext { span_id: derived_span_id(&[event_id.as_bytes(), b"/", context.as_bytes()]), ..*self }
    }

    /// The span in which `context`'s outbox relay publishes the event `event_id`.
    pub fn publish_span(&self, event_id: &str) -> TraceContext {
        TraceContext { span_id: derived_span_id(&[event_id.as_bytes(), b"/outbox"]), ..*self }
    }

    /// Whether the trace is sampled.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }

    /// The trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// The span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

impl fmt::Display for TraceContext {
    /// The `traceparent` header value: `00-<trace id>-<span id>-<flags>`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), self.flags)
    }
}

impl fmt::Debug for TraceContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TraceContext({self})")
    }
}

impl FromStr for TraceContext {
    type Err = TraceparentError;

    /// Parses a `traceparent` value. Versions after `00` are read by their first four fields, as
    /// the specification asks; version `ff` and all-zero ids are invalid.
    fn from_str(value: &str) -> Result<TraceContext, TraceparentError> {
        let value = value.trim();
        let parts: Vec<&str> = value.split('-').collect();
        if parts.len() < 4 {
            return Err(TraceparentError("expected version-traceid-spanid-flags"));
        }
        let version = parse_hex::<1>(parts[0]).ok_or(TraceparentError("version is not 2 hex digits"))?[0];
        if version == 0xff {
            return Err(TraceparentError("version ff is invalid"));
        }
        if version == 0 && parts.len() != 4 {
            return Err(TraceparentError("version 00 has exactly four fields"));
        }
        let trace_id = parse_hex::<16>(parts[1]).ok_or(TraceparentError("trace id is not 32 lowercase hex digits"))?;
        let span_id = parse_hex::<8>(parts[2]).ok_or(TraceparentError("span id is not 16 lowercase hex digits"))?;
        let flags = parse_hex::<1>(parts[3]).ok_or(TraceparentError("flags are not 2 hex digits"))?[0];
        if trace_id == [0; 16] {
            return Err(TraceparentError("trace id is all zeros"));
        }
        if span_id == [0; 8] {
            return Err(TraceparentError("span id is all zeros"));
        }
        Ok(TraceContext { trace_id, span_id, flags })
    }
}

fn random_span_id() -> [u8; 8] {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    let mut id = [0u8; 8];
    id.copy_from_slice(&bytes[8..]);
    if id == [0; 8] {
        id[7] = 1;
    }
    id
}

/// FNV-1a over the parts: stable across processes and versions, unlike std's hasher.
fn derived_span_id(parts: &[&[u8]]) -> [u8; 8] {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for byte in part.iter() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    if hash == 0 {
        hash = 1;
    }
    hash.to_be_bytes()
}

fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
    out
}

fn parse_hex<const N: usize>(text: &str) -> Option<[u8; N]> {
    if text.len() != N * 2 || !text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_w3c_example_round_trips() {
        let text = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parsed: TraceContext = text.parse().expect("valid");
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.span_id_hex(), "00f067aa0ba902b7");
        assert!(parsed.sampled());
        assert_eq!(parsed.to_string(), text);
    }

    #[test]
    fn invalid_values_are_refused_with_a_reason() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        ] {
            assert!(bad.parse::<TraceContext>().is_err(), "{bad:?} accepted");
        }
        // A later version may add fields.
        let future = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-whatever";
        assert!(future.parse::<TraceContext>().is_ok());
    }

    #[test]
    fn children_stay_in_the_trace_and_consumer_spans_are_stable() {
        let root = TraceContext::new_root();
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_ne!(child.span_id, root.span_id);
        let a = root.consumer_span("0190-event", "ordering");
        assert_eq!(a, root.consumer_span("0190-event", "ordering"));
        assert_ne!(a.span_id, root.consumer_span("0190-event", "depot").span_id);
        assert_ne!(a.span_id, root.publish_span("0190-event").span_id);
        assert_eq!(a.trace_id, root.trace_id);
    }
}
