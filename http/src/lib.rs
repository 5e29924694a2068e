//! What Carrier applications' HTTP APIs share (the central's, the store nodes', Whisko's): JSON errors that name the field,
//! API keys compared in constant time, bodies read with a size limit, and prices as decimal
//! JSON numbers kept as integer cents.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Largest request body either API reads: 1 MiB (a batch of a thousand updates fits).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// An error answered as `{"error":{"code","message","details"?}}` with its HTTP status.
#[derive(Debug)]
pub struct ApiError {
    /// The status.
    pub status: StatusCode,
    /// What clients match on.
    pub code: &'static str,
    /// A sentence for people.
    pub message: String,
    /// Facts the client may act on.
    pub details: Option<serde_json::Value>,
    /// Extra headers (`Retry-After`).
    pub headers: Vec<(&'static str, String)>,
}

impl ApiError {
    /// An error with no details.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, code, message: message.into(), details: None, headers: Vec::new() }
    }

    /// A 400 naming `field`.
    pub fn bad_field(field: &str, problem: impl std::fmt::Display) -> Self {
        let mut e = ApiError::new(StatusCode::BAD_REQUEST, "invalid_field", format!("{field}: {problem}"));
        e.details = Some(serde_json::json!({ "field": field }));
        e
    }

    /// The same error with another status.
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    /// The same error with `details`.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// With a header.
    pub fn with_header(mut self, name: &'static str, value: impl Into<String>) -> Self {
        self.headers.push((name, value.into()));
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = serde_json::json!({ "code": self.code, "message": self.message });
        if let Some(details) = self.details {
            error["details"] = details;
        }
        let mut response = (self.status, axum::Json(serde_json::json!({ "error": error }))).into_response();
        for (name, value) in self.headers {
            if let Ok(value) = HeaderValue::from_str(&value) {
                response.headers_mut().insert(name, value);
            }
        }
        response
    }
}

/// A JSON request body of type `T`, read with [`MAX_BODY_BYTES`] as its limit; a body that does
/// not decode is a 400 naming the field (its path, e.g. `updates[2].delta`) and the problem.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let too_large = || {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is over the limit of {MAX_BODY_BYTES} bytes"),
            )
        };
        let declared = req.headers().get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok());
        if declared.and_then(|v| v.parse::<usize>().ok()).is_some_and(|n| n > MAX_BODY_BYTES) {
            return Err(too_large());
        }
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                too_large()
            } else {
                ApiError::new(StatusCode::BAD_REQUEST, "unreadable_body", e.body_text())
            }
        })?;
        parse_json(&bytes).map(JsonBody)
    }
}

/// Decodes `bytes` as a `T`, naming the field that is wrong.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", format!("the body is not JSON: {inner}"));
        }
        // serde names a missing or unknown field in its message, at the path of the object.
        let field = field_of(&path, &inner.to_string());
        ApiError::bad_field(&field, inner)
    })?;
    deserializer.end().map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "malformed_json", e.to_string()))?;
    Ok(value)
}

/// The field a serde error is about: its path, or for a missing field (reported at the object
/// that lacks it) the path joined with the name between backquotes.
fn field_of(path: &str, message: &str) -> String {
    let named = message.strip_prefix("missing field `").and_then(|rest| rest.split('`').next());
    match (named, path) {
        (Some(name), "." | "") => name.to_string(),
        (Some(name), path) => format!("{path}.{name}"),
        (None, "." | "") => "body".to_string(),
        (None, path) => path.to_string(),
    }
}

/// The API keys a service accepts; `/health` needs none.
#[derive(Clone, Debug, Default)]
pub struct ApiKeys(std::sync::Arc<Vec<String>>);

impl ApiKeys {
    /// Keys from a comma-separated list (`API_KEYS`); blanks are dropped.
    pub fn parse(list: &str) -> Self {
        ApiKeys(std::sync::Arc::new(
            list.split(',').map(str::trim).filter(|k| !k.is_empty()).map(String::from).collect(),
        ))
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is one of the keys. Every key is compared in full and in constant time
    /// (for keys of one length), so the time taken does not tell how much of a key was right.
    pub fn accepts(&self, presented: &str) -> bool {
        use subtle::ConstantTimeEq;
        let mut found = subtle::Choice::from(0);
        for key in self.0.iter() {
            found |= key.as_bytes().ct_eq(presented.as_bytes());
        }
        found.into()
    }
}

/// Middleware: refuses a request without an accepted `X-API-Key` with 401 and a JSON error.
pub async fn require_api_key(keys: ApiKeys, headers: HeaderMap, request: Request, next: Next) -> Response {
    match headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        Some(key) if keys.accepts(key) => next.run(request).await,
        Some(_) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "invalid_api_key", "the X-API-Key header names no accepted key")
                .into_response()
        }
        None => ApiError::new(StatusCode::UNAUTHORIZED, "missing_api_key", "this endpoint needs an X-API-Key header")
            .into_response(),
    }
}

/// An API as both services serve it: `open` routes (`/health`) as they are, `protected` ones
/// behind `X-API-Key`, JSON errors for an unknown path (404) or method (405), and bodies read
/// up to [`MAX_BODY_BYTES`].
pub fn api(open: axum::Router, protected: axum::Router, keys: ApiKeys) -> axum::Router {
    let protected = protected.layer(axum::middleware::from_fn(move |headers, request, next| {
        require_api_key(keys.clone(), headers, request, next)
    }));
    open.merge(protected)
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint does not take that method",
            )
        })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
}

/// A price from a JSON number of currency units with at most two decimals (`99.99`), in cents.
pub fn cents(field: &str, price: f64) -> Result<i64, ApiError> {
    if !price.is_finite() || !(0.0..=1e13).contains(&price) {
        return Err(ApiError::bad_field(field, format!("must be a price from 0 to 10000000000000, got {price}")));
    }
    let cents = (price * 100.0).round();
    if (price * 100.0 - cents).abs() > 1e-6 {
        return Err(ApiError::bad_field(field, format!("has more than two decimals: {price}")));
    }
    Ok(cents as i64)
}

/// Cents as a JSON number of currency units (`9999` → `99.99`).
pub fn price(cents: i64) -> f64 {
    cents as f64 / 100.0
}

/// An offset and limit from a query string, each checked and named when wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paging {
    /// Rows to skip.
    pub offset: usize,
    /// Rows at most.
    pub limit: usize,
}

impl Paging {
    /// `offset` (default 0) and `limit` (default `default`, 1 to `max`) from the raw query
    /// parameters; a negative, non-numeric or too large value is a 400 naming it.
    pub fn parse(offset: Option<&str>, limit: Option<&str>, default: usize, max: usize) -> Result<Paging, ApiError> {
        let number = |field: &str, raw: Option<&str>, default: usize| -> Result<usize, ApiError> {
            match raw {
                None | Some("") => Ok(default),
                Some(raw) => raw.parse::<usize>().map_err(|_| {
                    ApiError::bad_field(field, format!("must be a whole number of 0 or more, got {raw:?}"))
                }),
            }
        };
        let offset = number("offset", offset, 0)?;
        let limit = number("limit", limit, default)?;
        if limit == 0 || limit > max {
            return Err(ApiError::bad_field("limit", format!("must be 1 to {max}, got {limit}")));
        }
        Ok(Paging { offset, limit })
    }
}

/// `{"status":"ok", ...}` for `/health`.
pub fn health(extra: serde_json::Value) -> Response {
    let mut body = serde_json::json!({ "status": "ok" });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    axum::Json(body).into_response()
}

/// `value` with its objects' keys in camelCase (`current_version` → `currentVersion`): the wire
/// contract's details in the HTTP API's spelling.
pub fn camel_case_keys(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let mut parts = k.split('_');
                    let mut key = parts.next().unwrap_or_default().to_string();
                    for part in parts {
                        let mut chars = part.chars();
                        if let Some(first) = chars.next() {
                            key.extend(first.to_uppercase());
                            key.push_str(chars.as_str());
                        }
                    }
                    (key, camel_case_keys(v))
                })
                .collect(),
        ),
        serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(camel_case_keys).collect()),
        other => other,
    }
}

/// A JSON response with a status.
pub fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields, rename_all = "camelCase")]
    #[allow(dead_code)]
    struct Update {
        product_id: String,
        delta: i64,
    }

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Batch {
        updates: Vec<Update>,
    }

    fn field(body: &str) -> String {
        let e = parse_json::<Batch>(body.as_bytes()).expect_err("refused");
        e.details.and_then(|d| d["field"].as_str().map(String::from)).unwrap_or_else(|| e.code.to_string())
    }

    #[test]
    fn a_bad_body_names_its_field() {
        assert_eq!(field(r#"{"updates":[{"productId":"p","delta":"x"}]}"#), "updates[0].delta");
        assert_eq!(field(r#"{"updates":[{"productId":"p"}]}"#), "updates[0].delta");
        assert_eq!(field(r#"{"updates":[{"productId":"p","delta":1,"extra":1}]}"#), "updates[0].extra");
        assert_eq!(field(r#"{}"#), "updates");
        assert_eq!(field(r#"{"updates":"#), "malformed_json");
    }

    #[test]
    fn prices_are_cents_with_two_decimals_at_most() {
        assert_eq!(cents("price", 99.99).expect("ok"), 9999);
        assert_eq!(cents("price", 0.1 + 0.2).expect("ok"), 30);
        assert!(cents("price", 1.005).is_err());
        assert!(cents("price", -1.0).is_err());
        assert!(cents("price", f64::NAN).is_err());
        assert_eq!(price(9999), 99.99);
    }

    #[test]
    fn keys_and_paging() {
        let keys = ApiKeys::parse("store-s1-key, demo,,");
        assert!(keys.accepts("demo") && keys.accepts("store-s1-key"));
        assert!(!keys.accepts("dem") && !keys.accepts("") && !keys.accepts("demo "));
        assert_eq!(Paging::parse(None, None, 50, 200).expect("ok"), Paging { offset: 0, limit: 50 });
        assert!(Paging::parse(Some("-1"), None, 50, 200).is_err());
        assert!(Paging::parse(None, Some("10000"), 50, 200).is_err());
        assert!(Paging::parse(None, Some("0"), 50, 200).is_err());
    }
}
