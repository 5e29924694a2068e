//! Carrier's own framing: the whole event, metadata and payload, in one CBOR map in the body,
//! with only `Nats-Msg-Id` in the headers.
//!
//! Why not headers: every NATS header costs the client a parse and an allocation on both sides,
//! and ten of them halved throughput (docs/performance.md). A CBOR map read in place costs a few
//! hundred nanoseconds and no allocation per attribute.
//!
//! The map uses CloudEvents attribute names, so the event is a CloudEvent in CBOR
//! (`application/cloudevents+cbor`): `specversion`, `id`, `type`, `source`, `subject` (the
//! aggregate id), `time`, `datacontenttype`, the extensions `aggregateversion`, `schemaversion`,
//! `correlationid`, `causationid`, `traceparent`, and `data`, the payload, either embedded as a
//! CBOR item or as a byte string in `datacontenttype`'s encoding.
//!
//! The reader here is a small CBOR parser of its own: it borrows the payload's bytes out of the
//! body instead of building a tree, and it names the attribute it refuses.

use std::borrow::Cow;
use std::str::FromStr;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use crate::envelope::{clip, ContentType, Envelope, EventId, MAX_ID_LEN};
use crate::error::DecodeError;
use crate::limits::SCHEMA_VERSION;

/// CloudEvents attribute names, as Carrier maps them (structured CBOR and JSON, and `ce-` headers).
pub mod attribute {
    /// Always `1.0`.
    pub const SPECVERSION: &str = "specversion";
    /// The event id: a UUID, or any string unique within its `source`.
    pub const ID: &str = "id";
    /// The event type, e.g. `stores.StoreCreated`.
    pub const TYPE: &str = "type";
    /// Who produced it; Carrier writes `/carrier/<context>`.
    pub const SOURCE: &str = "source";
    /// The aggregate (entity) id the event is about.
    pub const SUBJECT: &str = "subject";
    /// When the owner decided the event, RFC 3339.
    pub const TIME: &str = "time";
    /// The payload's encoding: `application/cbor` or `application/json`.
    pub const DATACONTENTTYPE: &str = "datacontenttype";
    /// Extension: the entity's version after this event (1, 2, 3, ...).
    pub const AGGREGATEVERSION: &str = "aggregateversion";
    /// Extension: the payload's schema version (default 1).
    pub const SCHEMAVERSION: &str = "schemaversion";
    /// Extension: shared by everything one request set off.
    pub const CORRELATIONID: &str = "correlationid";
    /// Extension: what directly caused this event.
    pub const CAUSATIONID: &str = "causationid";
    /// Extension (CloudEvents distributed tracing): W3C trace context.
    pub const TRACEPARENT: &str = "traceparent";
    /// The payload.
    pub const DATA: &str = "data";
    /// The payload as base64 (JSON format only).
    pub const DATA_BASE64: &str = "data_base64";
}

/// The `Content-Type` of a structured CBOR event (optional on the wire: it is the default).
pub const CLOUDEVENTS_CBOR: &str = "application/cloudevents+cbor";

/// What Carrier writes in `source`.
pub fn source_of(context: &str) -> String {
    format!("/carrier/{context}")
}

/// An event read off the wire before its payload is decoded.
#[derive(Debug)]
pub struct Framed<'a> {
    /// The metadata. `aggregate_id` is empty when the message did not carry one (CloudEvents
    /// `subject` is optional): the payload's id is then used.
    pub envelope: Envelope,
    /// The payload's bytes, in `envelope.content_type`.
    pub data: Cow<'a, [u8]>,
}

/// Encodes the structured CBOR body for an envelope and its payload (already encoded in the
/// envelope's content type).
pub fn encode(envelope: &Envelope, source: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 200 + envelope.aggregate_id.len() + envelope.event_type.len());
    let entries = 11 + usize::from(envelope.causation_id.is_some()) + usize::from(envelope.traceparent.is_some());
    head(&mut out, 5, entries as u64);
    text(&mut out, attribute::SPECVERSION);
    text(&mut out, "1.0");
    text(&mut out, attribute::ID);
    let mut id = uuid::Uuid::encode_buffer();
    text(&mut out, envelope.event_id.0.hyphenated().encode_lower(&mut id));
    text(&mut out, attribute::TYPE);
    text(&mut out, &envelope.event_type);
    text(&mut out, attribute::SOURCE);
    text(&mut out, source);
    text(&mut out, attribute::SUBJECT);
    text(&mut out, &envelope.aggregate_id);
    text(&mut out, attribute::TIME);
    text(&mut out, &envelope.occurred_at_rfc3339());
    text(&mut out, attribute::DATACONTENTTYPE);
    text(&mut out, envelope.content_type.as_str());
    text(&mut out, attribute::AGGREGATEVERSION);
    head(&mut out, 0, envelope.aggregate_version);
    text(&mut out, attribute::SCHEMAVERSION);
    head(&mut out, 0, u64::from(envelope.schema_version));
    text(&mut out, attribute::CORRELATIONID);
    text(&mut out, &envelope.correlation_id);
    if let Some(causation) = &envelope.causation_id {
        text(&mut out, attribute::CAUSATIONID);
        text(&mut out, causation);
    }
    if let Some(trace) = &envelope.traceparent {
        text(&mut out, attribute::TRACEPARENT);
        text(&mut out, &trace.to_string());
    }
    text(&mut out, attribute::DATA);
    match envelope.content_type {
        // A CBOR payload is one CBOR item: embed it, so the whole event reads as one document.
        ContentType::Cbor => out.extend_from_slice(payload),
        ContentType::Json => {
            head(&mut out, 2, payload.len() as u64);
            out.extend_from_slice(payload);
        }
    }
    out
}

fn head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    if n < 24 {
        out.push(m | n as u8);
    } else if n <= u64::from(u8::MAX) {
        out.extend_from_slice(&[m | 24, n as u8]);
    } else if n <= u64::from(u16::MAX) {
        out.push(m | 25);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else if n <= u64::from(u32::MAX) {
        out.push(m | 26);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    } else {
        out.push(m | 27);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// Writes the head of a CBOR array of `n` items (a commit of several events).
pub(crate) fn array_head(out: &mut Vec<u8>, n: u64) {
    head(out, 4, n);
}

/// The items of a body that is a CBOR array (a commit of several structured events), each as
/// its own bytes; `None` when the body is not an array (one event).
pub(crate) fn array_items(body: &[u8]) -> Result<Option<Vec<&[u8]>>, DecodeError> {
    if body.first().map(|b| b >> 5) != Some(4) {
        return Ok(None);
    }
    let not_commit = |reason: String| DecodeError::Envelope {
        format: CLOUDEVENTS_CBOR,
        reason: format!("a commit of several events: {reason}"),
    };
    let mut r = Reader { buf: body, pos: 0, depth: 0 };
    let (_, len) = r.head().map_err(not_commit)?;
    let mut items = Vec::new();
    loop {
        match len {
            Some(n) if items.len() as u64 == n => break,
            None if r.peek() == Some(0xff) => {
                r.pos += 1;
                break;
            }
            _ => {}
        }
        if items.len() >= 10_000 {
            return Err(not_commit("more than 10000 events".into()));
        }
        let start = r.pos;
        r.depth = 0;
        r.skip().map_err(not_commit)?;
        items.push(&body[start..r.pos]);
    }
    if r.pos != body.len() {
        return Err(not_commit("bytes after the last event".into()));
    }
    if items.is_empty() {
        return Err(not_commit("no events".into()));
    }
    Ok(Some(items))
}

fn text(out: &mut Vec<u8>, s: &str) {
    head(out, 3, s.len() as u64);
    out.extend_from_slice(s.as_bytes());
}

/// The attributes as read, before they are checked (shared with the JSON and header readers).
#[derive(Default)]
pub(crate) struct Attributes<'a> {
    pub specversion: Option<Cow<'a, str>>,
    pub id: Option<Cow<'a, str>>,
    pub event_type: Option<Cow<'a, str>>,
    pub source: Option<Cow<'a, str>>,
    pub subject: Option<Cow<'a, str>>,
    pub time: Option<Cow<'a, str>>,
    pub datacontenttype: Option<Cow<'a, str>>,
    pub aggregateversion: Option<Number<'a>>,
    pub schemaversion: Option<Number<'a>>,
    pub correlationid: Option<Cow<'a, str>>,
    pub causationid: Option<Cow<'a, str>>,
    pub traceparent: Option<Cow<'a, str>>,
}

/// An integer attribute: a number in CBOR and JSON, text in headers.
pub(crate) enum Number<'a> {
    Int(u64),
    Text(Cow<'a, str>),
}

impl<'a> Attributes<'a> {
    /// Checks the attributes and builds the envelope. `data_content_type_default` applies when
    /// `datacontenttype` is absent.
    pub fn into_envelope(self, data_content_type_default: ContentType) -> Result<Envelope, DecodeError> {
        use attribute as a;
        if let Some(version) = &self.specversion {
            if version.trim() != "1.0" {
                return Err(bad(a::SPECVERSION, format!("expected \"1.0\", got {:?}", clip(version))));
            }
        }
        let event_type = match self.event_type {
            Some(t) if !t.trim().is_empty() => t.trim().to_string(),
            _ => return Err(DecodeError::MissingAttribute(a::TYPE)),
        };
        let id_text = match &self.id {
            Some(id) if !id.trim().is_empty() => id.trim(),
            _ => return Err(DecodeError::MissingAttribute(a::ID)),
        };
        if id_text.len() > MAX_ID_LEN {
            return Err(bad(a::ID, format!("must be 1 to {MAX_ID_LEN} bytes, got {}", id_text.len())));
        }
        let source = self.source.as_deref().map(str::trim).unwrap_or("");
        let event_id = match EventId::from_str(id_text) {
            Ok(id) => id,
            // CloudEvents ids need only be unique within their source: map (source, id) onto a
            // name-based UUID, so the inbox de-duplicates them like any other.
            Err(_) => EventId(uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_URL, format!("{source}#{id_text}").as_bytes())),
        };
        let aggregate_version = match self.aggregateversion {
            None => return Err(DecodeError::MissingAttribute(a::AGGREGATEVERSION)),
            Some(n) => n
                .whole(a::AGGREGATEVERSION)?
                .filter(|v| *v >= 1)
                .ok_or_else(|| bad(a::AGGREGATEVERSION, "must be a whole number from 1 up".to_string()))?,
        };
        let schema_version = match self.schemaversion {
            None => SCHEMA_VERSION,
            Some(n) => n
                .whole(a::SCHEMAVERSION)?
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| bad(a::SCHEMAVERSION, "must be a whole number".to_string()))?,
        };
        let aggregate_id = match self.subject {
            None => String::new(),
            Some(s) => checked_id(a::SUBJECT, &s)?,
        };
        let occurred_at_unix_nanos = match &self.time {
            None => OffsetDateTime::now_utc().unix_timestamp_nanos(),
            Some(t) => OffsetDateTime::parse(t.trim(), &Rfc3339)
                .map_err(|e| bad(a::TIME, format!("not RFC 3339 ({e}): {:?}", clip(t))))?
                .unix_timestamp_nanos(),
        };
        let correlation_id = match &self.correlationid {
            None => event_id.to_string(),
            Some(c) => checked_id(a::CORRELATIONID, c)?,
        };
        let causation_id = self.causationid.as_deref().map(|c| checked_id(a::CAUSATIONID, c)).transpose()?;
        let content_type = match &self.datacontenttype {
            None => data_content_type_default,
            Some(t) => ContentType::parse(t).ok_or_else(|| {
                bad(a::DATACONTENTTYPE, format!("expected application/cbor or application/json, got {:?}", clip(t)))
            })?,
        };
        Ok(Envelope {
            event_id,
            event_type,
            schema_version,
            aggregate_id,
            aggregate_version,
            occurred_at_unix_nanos,
            correlation_id,
            causation_id,
            content_type,
            traceparent: self.traceparent.and_then(|t| t.trim().parse().ok()),
        })
    }
}

impl Number<'_> {
    fn whole(self, attribute: &'static str) -> Result<Option<u64>, DecodeError> {
        match self {
            Number::Int(n) => Ok(Some(n)),
            Number::Text(t) => t
                .trim()
                .parse::<u64>()
                .map(Some)
                .map_err(|_| bad(attribute, format!("not a whole number: {:?}", clip(&t)))),
        }
    }
}

fn checked_id(attribute: &'static str, value: &str) -> Result<String, DecodeError> {
    let v = value.trim();
    if v.is_empty() || v.len() > MAX_ID_LEN {
        return Err(bad(attribute, format!("must be 1 to {MAX_ID_LEN} bytes, got {}", v.len())));
    }
    Ok(v.to_string())
}

pub(crate) fn bad(attribute: &'static str, reason: String) -> DecodeError {
    DecodeError::BadAttribute { attribute, reason }
}

/// Reads a structured CBOR event.
pub fn decode(body: &[u8]) -> Result<Framed<'_>, DecodeError> {
    let mut r = Reader { buf: body, pos: 0, depth: 0 };
    let not_event = |reason: String| DecodeError::Envelope { format: CLOUDEVENTS_CBOR, reason };
    let (major, len) = r.head().map_err(not_event)?;
    if major != 5 {
        return Err(not_event(format!(
            "the body is not a CBOR map of event attributes (CBOR major type {major}); a producer that \
             puts the event in headers must send Carrier-Event-Type or ce-type"
        )));
    }
    let mut attrs = Attributes::default();
    let mut data: Option<Cow<'_, [u8]>> = None;
    let mut data_is_bytes = false;
    let mut remaining = len;
    loop {
        match remaining {
            Some(0) => break,
            Some(n) => remaining = Some(n - 1),
            None => {
                if r.peek() == Some(0xff) {
                    r.pos += 1;
                    break;
                }
            }
        }
        let key = r.text().map_err(|e| not_event(format!("attribute name: {e}")))?;
        use attribute as a;
        match key.as_ref() {
            a::SPECVERSION => attrs.specversion = Some(r.text().map_err(|e| bad(a::SPECVERSION, e))?),
            a::ID => attrs.id = Some(r.text().map_err(|e| bad(a::ID, e))?),
            a::TYPE => attrs.event_type = Some(r.text().map_err(|e| bad(a::TYPE, e))?),
            a::SOURCE => attrs.source = Some(r.text().map_err(|e| bad(a::SOURCE, e))?),
            a::SUBJECT => attrs.subject = Some(r.text().map_err(|e| bad(a::SUBJECT, e))?),
            a::TIME => attrs.time = Some(r.text().map_err(|e| bad(a::TIME, e))?),
            a::DATACONTENTTYPE => attrs.datacontenttype = Some(r.text().map_err(|e| bad(a::DATACONTENTTYPE, e))?),
            a::CORRELATIONID => attrs.correlationid = Some(r.text().map_err(|e| bad(a::CORRELATIONID, e))?),
            a::CAUSATIONID => attrs.causationid = Some(r.text().map_err(|e| bad(a::CAUSATIONID, e))?),
            a::TRACEPARENT => attrs.traceparent = Some(r.text().map_err(|e| bad(a::TRACEPARENT, e))?),
            a::AGGREGATEVERSION => attrs.aggregateversion = Some(r.number().map_err(|e| bad(a::AGGREGATEVERSION, e))?),
            a::SCHEMAVERSION => attrs.schemaversion = Some(r.number().map_err(|e| bad(a::SCHEMAVERSION, e))?),
            a::DATA => {
                if r.peek().map(|b| b >> 5) == Some(2) {
                    data = Some(r.bytes().map_err(|e| bad(a::DATA, e))?);
                    data_is_bytes = true;
                } else {
                    let start = r.pos;
                    r.skip().map_err(|e| bad(a::DATA, e))?;
                    data = Some(Cow::Borrowed(&body[start..r.pos]));
                }
            }
            _ => r.skip().map_err(|e| not_event(format!("attribute {:?}: {e}", clip(&key))))?,
        }
    }
    if r.pos != body.len() {
        return Err(not_event(format!("{} bytes after the event's map", body.len() - r.pos)));
    }
    let envelope = attrs.into_envelope(ContentType::Cbor)?;
    if !data_is_bytes && envelope.content_type != ContentType::Cbor {
        return Err(bad(
            attribute::DATA,
            format!(
                "embedded CBOR, but datacontenttype is {}: send it as a byte string",
                envelope.content_type.as_str()
            ),
        ));
    }
    let data = data.ok_or(DecodeError::MissingAttribute(attribute::DATA))?;
    Ok(Framed { envelope, data })
}

/// Nesting deeper than this is refused rather than recursed into.
const MAX_DEPTH: u32 = 64;

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    depth: u32,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.buf.get(self.pos).copied()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len()).ok_or("truncated")?;
        let bytes = &self.buf[self.pos..end];
        self.pos = end;
        Ok(bytes)
    }

    /// The major type and its argument; `None` for an indefinite length.
    fn head(&mut self) -> Result<(u8, Option<u64>), String> {
        let first = *self.take(1)?.first().ok_or("truncated")?;
        let (major, info) = (first >> 5, first & 0x1f);
        let arg = match info {
            0..=23 => Some(u64::from(info)),
            24 => Some(u64::from(self.take(1)?[0])),
            25 => Some(u64::from(u16::from_be_bytes(self.take(2)?.try_into().map_err(|_| "truncated")?))),
            26 => Some(u64::from(u32::from_be_bytes(self.take(4)?.try_into().map_err(|_| "truncated")?))),
            27 => Some(u64::from_be_bytes(self.take(8)?.try_into().map_err(|_| "truncated")?)),
            31 if matches!(major, 2..=5 | 7) => None,
            _ => return Err(format!("malformed CBOR (initial byte 0x{first:02x})")),
        };
        Ok((major, arg))
    }

    fn len(&self, n: u64) -> Result<usize, String> {
        usize::try_from(n).ok().filter(|n| *n <= self.buf.len() - self.pos).ok_or_else(|| "truncated".to_string())
    }

    fn string(&mut self, want: u8) -> Result<Cow<'a, [u8]>, String> {
        let name = if want == 3 { "a text string" } else { "a byte string" };
        let (major, len) = self.head()?;
        if major != want {
            return Err(format!("expected {name}, got CBOR major type {major}"));
        }
        match len {
            Some(n) => {
                let n = self.len(n)?;
                Ok(Cow::Borrowed(self.take(n)?))
            }
            None => {
                let mut joined = Vec::new();
                while self.peek() != Some(0xff) {
                    let (major, len) = self.head()?;
                    let n = len.filter(|_| major == want).ok_or("malformed chunk in an indefinite string")?;
                    let n = self.len(n)?;
                    joined.extend_from_slice(self.take(n)?);
                }
                self.pos += 1;
                Ok(Cow::Owned(joined))
            }
        }
    }

    fn text(&mut self) -> Result<Cow<'a, str>, String> {
        match self.string(3)? {
            Cow::Borrowed(b) => std::str::from_utf8(b).map(Cow::Borrowed).map_err(|_| "not UTF-8".to_string()),
            Cow::Owned(v) => String::from_utf8(v).map(Cow::Owned).map_err(|_| "not UTF-8".to_string()),
        }
    }

    fn bytes(&mut self) -> Result<Cow<'a, [u8]>, String> {
        self.string(2)
    }

    fn number(&mut self) -> Result<Number<'a>, String> {
        match self.peek().map(|b| b >> 5) {
            Some(0) => match self.head()? {
                (_, Some(n)) => Ok(Number::Int(n)),
                _ => Err("malformed integer".into()),
            },
            Some(3) => self.text().map(Number::Text),
            _ => Err("expected an unsigned integer".into()),
        }
    }

    /// Steps over one item of any type.
    fn skip(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return Err(format!("nested deeper than {MAX_DEPTH}"));
        }
        let (major, len) = self.head()?;
        match (major, len) {
            (0 | 1 | 7, Some(_)) => {}
            (2 | 3, Some(n)) => {
                let n = self.len(n)?;
                self.take(n)?;
            }
            (2 | 3, None) => {
                self.pos -= 1;
                self.string(major)?;
            }
            (4, Some(n)) => {
                for _ in 0..n {
                    self.skip()?;
                }
            }
            (5, Some(n)) => {
                for _ in 0..n.saturating_mul(2) {
                    self.skip()?;
                }
            }
            (4 | 5, None) => {
                while self.peek() != Some(0xff) {
                    if self.peek().is_none() {
                        return Err("truncated".into());
                    }
                    self.skip()?;
                }
                self.pos += 1;
            }
            (6, Some(_)) => self.skip()?,
            (7, None) => return Err("unexpected break".into()),
            _ => return Err(format!("malformed CBOR (major type {major})")),
        }
        self.depth -= 1;
        Ok(())
    }
}
