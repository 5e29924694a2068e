//! CloudEvents as other producers send them over NATS: binary mode (attributes in `ce-` headers,
//! the payload alone in the body, its encoding in `Content-Type`) and structured JSON mode (the
//! whole event in a JSON body, `Content-Type: application/cloudevents+json`).
//!
//! Both map onto the same [`Envelope`](crate::Envelope) as Carrier's own structured CBOR; the
//! mapping is in [`attribute`](crate::structured::attribute) and docs/wire-contract.md.

use std::borrow::Cow;

use base64::Engine as _;
use serde::Deserialize;

use crate::envelope::{clip, ContentType};
use crate::error::DecodeError;
use crate::structured::{attribute as a, bad, Attributes, Framed, Number};

/// `Content-Type` of a structured JSON CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// The header prefix of binary-mode attributes.
pub const HEADER_PREFIX: &str = "ce-";

/// Reads a binary-mode CloudEvent: attributes from `ce-` headers, the body is the payload in
/// `Content-Type`'s encoding (JSON when absent, as most CloudEvents SDKs send).
pub fn decode_binary<'a>(header: impl Fn(&str) -> Option<&'a str>, body: &'a [u8]) -> Result<Framed<'a>, DecodeError> {
    let get = |name: &str| header(&format!("{HEADER_PREFIX}{name}")).map(Cow::Borrowed);
    let attrs = Attributes {
        specversion: get(a::SPECVERSION),
        id: get(a::ID),
        event_type: get(a::TYPE),
        source: get(a::SOURCE),
        subject: get(a::SUBJECT),
        time: get(a::TIME),
        // In binary mode the data's content type is the message's own.
        datacontenttype: header("Content-Type").map(Cow::Borrowed),
        aggregateversion: get(a::AGGREGATEVERSION).map(Number::Text),
        schemaversion: get(a::SCHEMAVERSION).map(Number::Text),
        correlationid: get(a::CORRELATIONID),
        causationid: get(a::CAUSATIONID),
        // The distributed-tracing extension travels as `traceparent` or `ce-traceparent`.
        traceparent: get(a::TRACEPARENT).or_else(|| header(crate::trace::TRACEPARENT).map(Cow::Borrowed)),
    };
    let envelope = attrs.into_envelope(ContentType::Json)?;
    Ok(Framed { envelope, data: Cow::Borrowed(body) })
}

/// A structured JSON CloudEvent as it arrives; integer extensions may be numbers or strings.
#[derive(Deserialize)]
struct JsonEvent<'a> {
    #[serde(borrow, default)]
    specversion: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    event_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    subject: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    datacontenttype: Option<Cow<'a, str>>,
    #[serde(default)]
    aggregateversion: Option<serde_json::Value>,
    #[serde(default)]
    schemaversion: Option<serde_json::Value>,
    #[serde(borrow, default)]
    correlationid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    causationid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    traceparent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    data_base64: Option<Cow<'a, str>>,
}

fn json_number(attribute: &'static str, value: serde_json::Value) -> Result<Number<'static>, DecodeError> {
    match value {
        serde_json::Value::Number(n) => {
            n.as_u64().map(Number::Int).ok_or_else(|| bad(attribute, format!("not a whole number: {n}")))
        }
        serde_json::Value::String(s) => Ok(Number::Text(Cow::Owned(s))),
        other => Err(bad(attribute, format!("expected a number, got {}", clip(&other.to_string())))),
    }
}

/// Reads a structured JSON CloudEvent. `data` holds a JSON payload; `data_base64` a payload in
/// `datacontenttype`'s encoding (e.g. `application/cbor`).
pub fn decode_json(body: &[u8]) -> Result<Framed<'_>, DecodeError> {
    let event: JsonEvent<'_> = serde_json::from_slice(body)
        .map_err(|e| DecodeError::Envelope { format: CLOUDEVENTS_JSON, reason: clip(&e.to_string()) })?;
    let attrs = Attributes {
        specversion: event.specversion,
        id: event.id,
        event_type: event.event_type,
        source: event.source,
        subject: event.subject,
        time: event.time,
        datacontenttype: event.datacontenttype,
        aggregateversion: event.aggregateversion.map(|v| json_number(a::AGGREGATEVERSION, v)).transpose()?,
        schemaversion: event.schemaversion.map(|v| json_number(a::SCHEMAVERSION, v)).transpose()?,
        correlationid: event.correlationid,
        causationid: event.causationid,
        traceparent: event.traceparent,
    };
    let envelope = attrs.into_envelope(ContentType::Json)?;
    let data = match (event.data, event.data_base64) {
        (Some(_), Some(_)) => return Err(bad(a::DATA, "both data and data_base64 are present".into())),
        (Some(raw), None) => {
            if envelope.content_type != ContentType::Json {
                return Err(bad(
                    a::DATA,
                    format!("JSON data with datacontenttype {}: use data_base64", envelope.content_type.as_str()),
                ));
            }
            Cow::Borrowed(raw.get().as_bytes())
        }
        (None, Some(encoded)) => Cow::Owned(
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim().as_bytes())
                .map_err(|e| bad(a::DATA_BASE64, format!("not base64: {e}")))?,
        ),
        (None, None) => return Err(DecodeError::MissingAttribute(a::DATA)),
    };
    Ok(Framed { envelope, data })
}
