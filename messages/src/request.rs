//! Commands over NATS request/reply: the subject a context listens on and the reply it sends.
//!
//! A client sends a command (e.g. [`crate::stores::StoresCommand`], tagged by its `command`
//! field) to `cmd.<context>`, as JSON or CBOR (`Content-Type`), and gets a [`CommandReply`] in
//! the same encoding. Command subjects live outside the event streams' subjects, so JetStream
//! never captures (or answers) a request.

use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::envelope::{clip, ContentType};

/// The subject a context's commands are sent to, e.g. `cmd.stores`.
pub fn command_subject(context: &str) -> String {
    format!("cmd.{context}")
}

/// The subject a context's queries are sent to, e.g. `query.stores`.
pub fn query_subject(context: &str) -> String {
    format!("query.{context}")
}

/// The answer to a command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CommandReply {
    /// Whether the command was carried out.
    pub ok: bool,
    /// The event it recorded, when `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<RecordedEvent>,
    /// Why not, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CommandFailure>,
}

/// The event a command recorded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RecordedEvent {
    /// Its id (also its `Nats-Msg-Id` when published).
    pub event_id: String,
    /// E.g. `stores.StoreCreated`.
    pub event_type: String,
    /// The entity.
    pub aggregate_id: String,
    /// The entity's version after it.
    pub aggregate_version: u64,
}

/// Why a command was not carried out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CommandFailure {
    /// `bad_request`, `not_found`, `already_exists`, `rejected`, `invalid`, or `unavailable`
    /// (the only one worth retrying unchanged).
    pub code: String,
    /// A sentence for people.
    pub message: String,
}

impl CommandReply {
    /// A failure with `code`.
    pub fn failed(code: &str, message: impl Into<String>) -> Self {
        CommandReply {
            ok: false,
            event: None,
            error: Some(CommandFailure { code: code.to_string(), message: message.into() }),
        }
    }
}

/// The answer type of a context's queries: Carrier answers a request it cannot decode, or a
/// query that failed in storage, with [`QueryReply::failed`].
pub trait QueryReply: Serialize + JsonSchema + Send + 'static {
    /// A failure with `code` (`bad_request`, `unavailable`, ...) and a sentence for people.
    fn failed(code: &str, message: String) -> Self;
}

/// The answer to a query that finds one thing or nothing, which is what most queries are:
/// `{"ok": true, "found": {...}}`, `{"ok": true}` when nothing was found, or
/// `{"ok": false, "error": {"code": ..., "message": ...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(bound(deserialize = "T: Deserialize<'de>"))]
pub struct Found<T> {
    /// Whether the query was answered (finding nothing is an answer).
    pub ok: bool,
    /// What was found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found: Option<T>,
    /// Why not, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CommandFailure>,
}

impl<T> Found<T> {
    /// The answer for a lookup's result; a failed lookup answers `unavailable`.
    pub fn answer<E: std::fmt::Display>(result: Result<Option<T>, E>) -> Self {
        match result {
            Ok(found) => Found { ok: true, found, error: None },
            Err(e) => Found {
                ok: false,
                found: None,
                error: Some(CommandFailure { code: "unavailable".into(), message: e.to_string() }),
            },
        }
    }
}

impl<T: Serialize + JsonSchema + Send + 'static> QueryReply for Found<T> {
    fn failed(code: &str, message: String) -> Self {
        Found { ok: false, found: None, error: Some(CommandFailure { code: code.to_string(), message }) }
    }
}

/// The subject an owner answers [`EntityQuery`]s on, e.g. `query.inventory.entity`: how any
/// cache of its entities repairs a version gap, whatever the owner's own queries are.
pub fn entity_subject(owner: &str) -> String {
    format!("query.{owner}.entity")
}

/// Asks an owner for one entity's current state; answered with a [`Found`]`<`[`Entity`]`>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct EntityQuery {
    /// The kind of entity, as its events name it (`product`).
    pub aggregate: String,
    /// Its id.
    pub id: String,
}

/// An entity's state as its owner has it, at the version of its last event. The owner sends
/// its own row; each cache reads the fields it keeps (so `S` differs on the two sides).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Entity<S> {
    /// The version of its last event.
    pub version: u64,
    /// Its state.
    pub state: S,
}

impl Entity<serde_json::Value> {
    /// The entity `row` at `version`, for an owner's answer.
    pub fn of<T: Serialize>(version: u64, row: &T) -> Self {
        Entity { version, state: serde_json::to_value(row).unwrap_or(serde_json::Value::Null) }
    }
}

/// Why a request (or reply) body did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// Over [`MAX_BODY_BYTES`](crate::limits::MAX_BODY_BYTES).
    #[error("body of {len} bytes is over the limit")]
    TooLarge {
        /// Its length.
        len: usize,
    },
    /// Not the expected shape in its encoding; the decoder's words, shortened.
    #[error("{0}")]
    Malformed(String),
}

/// Decodes a request body of the given encoding.
pub fn decode_request<T: DeserializeOwned>(content_type: ContentType, body: &[u8]) -> Result<T, RequestError> {
    if body.len() > crate::limits::MAX_BODY_BYTES {
        return Err(RequestError::TooLarge { len: body.len() });
    }
    match content_type {
        ContentType::Json => serde_json::from_slice(body).map_err(|e| RequestError::Malformed(clip(&e.to_string()))),
        ContentType::Cbor => crate::cbor::from_slice(body).map_err(|e| RequestError::Malformed(clip(&e.to_string()))),
    }
}

/// Encodes a reply (or request) body.
pub fn encode_body<T: Serialize>(content_type: ContentType, value: &T) -> Vec<u8> {
    match content_type {
        ContentType::Json => serde_json::to_vec(value).unwrap_or_default(),
        ContentType::Cbor => crate::cbor::to_vec(value).unwrap_or_default(),
    }
}
