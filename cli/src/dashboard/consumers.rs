//! The consumer actions: pause, resume, seek and skip (see `carrier_actors::offsets`), each
//! behind the actions key like every action.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::Json;
use carrier_actors::ActionError;
use carrier_actors::{Reposition, SeekTo, MAX_SKIP};

use super::{authorize, ApiError, AppResult, AppState};

fn refused(e: ActionError) -> ApiError {
    let status = if e.is_not_found() {
        StatusCode::NOT_FOUND
    } else if e.is_bad_request() {
        StatusCode::BAD_REQUEST
    } else if e.is_conflict() {
        StatusCode::CONFLICT
    } else {
        StatusCode::BAD_GATEWAY
    };
    ApiError(status, e.to_string())
}

fn bad(message: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, message.into())
}

/// The body as a JSON object with only `allowed` fields; an empty body is `{}`.
fn object(body: &[u8], allowed: &[&str]) -> Result<serde_json::Map<String, serde_json::Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| bad(format!("the body is not JSON: {e}")))?;
    let serde_json::Value::Object(map) = value else { return Err(bad("the body must be a JSON object")) };
    if let Some(unknown) = map.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(bad(format!("unknown field `{unknown}`; expected {}", allowed.join(" or "))));
    }
    Ok(map)
}

async fn set_paused(state: &AppState, headers: &HeaderMap, context: &str, source: &str, paused: bool) -> AppResult {
    authorize(state, headers)?;
    let was = state.observer.pause(context, source, paused).await.map_err(refused)?;
    if was != paused {
        tracing::warn!(%context, %source, paused, "consumer paused or resumed by the operator");
    }
    Ok(Json(serde_json::json!({ "context": context, "source": source, "paused": paused, "was_paused": was }))
        .into_response())
}

/// `pause` (`PAUSED`) and `resume`.
pub(super) async fn pausing<const PAUSED: bool>(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((context, source)): Path<(String, String)>,
) -> AppResult {
    set_paused(&state, &headers, &context, &source, PAUSED).await
}

/// `{"sequence": N}` or `{"time": "2026-12-04T10:00:00Z"}`.
pub(super) async fn seek(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((context, source)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> AppResult {
    authorize(&state, &headers)?;
    let body = object(&body, &["sequence", "time"])?;
    let to = match (body.get("sequence"), body.get("time")) {
        (Some(seq), None) => {
            SeekTo::Sequence(seq.as_u64().ok_or_else(|| bad("`sequence` must be a whole number of at least 1"))?)
        }
        (None, Some(time)) => {
            let text = time.as_str().ok_or_else(|| bad("`time` must be an RFC 3339 string"))?;
            let at = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
                .map_err(|e| bad(format!("`time` {text:?} is not RFC 3339 (e.g. 2026-12-04T10:00:00Z): {e}")))?;
            SeekTo::Time(at.into())
        }
        _ => return Err(bad("give exactly one of `sequence` (a stream sequence) or `time` (RFC 3339)")),
    };
    let done = state.observer.reposition(&context, &source, Reposition::Seek(to)).await.map_err(refused)?;
    Ok(Json(done).into_response())
}

/// `{"count": N}` (default 1).
pub(super) async fn skip(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((context, source)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> AppResult {
    authorize(&state, &headers)?;
    let body = object(&body, &["count"])?;
    let count = match body.get("count") {
        None => 1,
        Some(n) => {
            n.as_u64()
                .filter(|n| (1..=MAX_SKIP as u64).contains(n))
                .ok_or_else(|| bad(format!("`count` must be a whole number from 1 to {MAX_SKIP}")))? as u32
        }
    };
    let done = state.observer.reposition(&context, &source, Reposition::Skip { count }).await.map_err(refused)?;
    Ok(Json(done).into_response())
}
