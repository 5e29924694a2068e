//! Which framing a message came in: [`Envelope::read`] looks at the headers and hands the body
//! to the reader of that framing (Carrier's headers, CloudEvents binary or JSON, structured CBOR).

use crate::envelope::{clip, header, ContentType, Envelope};
use crate::error::DecodeError;

impl Envelope {
    /// Reads an event's envelope and finds its payload, in whichever framing it came:
    ///
    /// 1. a `Carrier-Event-Type` (or `-Aggregate-Id`, `-Aggregate-Version`) header, or
    ///    `Content-Type` `application/cbor` / `application/json` without `ce-` headers:
    ///    Carrier's header framing ([`Envelope::from_headers`]);
    /// 2. a `ce-type` or `ce-specversion` header: CloudEvents binary mode;
    /// 3. `Content-Type: application/cloudevents+json`: CloudEvents structured JSON;
    /// 4. otherwise (no `Content-Type`, or `application/cloudevents+cbor`): Carrier's structured
    ///    CBOR, what Carrier writes.
    pub fn read<'a>(
        header: impl Fn(&str) -> Option<&'a str>,
        body: &'a [u8],
    ) -> Result<crate::structured::Framed<'a>, DecodeError> {
        let content_type = header(header::CONTENT_TYPE).map(|v| v.split(';').next().unwrap_or("").trim());
        let legacy_type = content_type.and_then(ContentType::parse).is_some();
        let carrier_headers = header(header::EVENT_TYPE).is_some()
            || header(header::AGGREGATE_ID).is_some()
            || header(header::AGGREGATE_VERSION).is_some();
        let cloudevent = header("ce-type").is_some() || header("ce-specversion").is_some();
        if carrier_headers || (legacy_type && !cloudevent) {
            let envelope = Envelope::from_headers(header)?;
            return Ok(crate::structured::Framed { envelope, data: std::borrow::Cow::Borrowed(body) });
        }
        if cloudevent {
            return crate::cloudevents::decode_binary(header, body);
        }
        match content_type {
            Some(t) if t.eq_ignore_ascii_case(crate::cloudevents::CLOUDEVENTS_JSON) => {
                crate::cloudevents::decode_json(body)
            }
            None => crate::structured::decode(body),
            Some(t) if t.eq_ignore_ascii_case(crate::structured::CLOUDEVENTS_CBOR) => crate::structured::decode(body),
            Some(t) => Err(DecodeError::BadHeader {
                header: header::CONTENT_TYPE,
                reason: format!(
                    "expected application/cloudevents+cbor, application/cloudevents+json, or (with Carrier's \
                     headers) application/cbor or application/json, got {:?}",
                    clip(t)
                ),
            }),
        }
    }
}
