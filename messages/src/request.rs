//! Commands over NATS request/reply: the subject a context listens on and the reply it sends.
//!
//! A client sends a command (e.g. the mall's `StoresCommand`, tagged by its `command`
//! field) to `cmd.<context>`, as JSON or CBOR (`Content-Type`), and gets a [`CommandReply`] in
//! the same encoding. Command subjects live outside the event streams' subjects, so JetStream
//! never captures (or answers) a request.

use schemars::JsonSchema;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

use crate::envelope::{clip, ContentType};
use crate::ValidationError;

/// The subject a context's commands are sent to, e.g. `cmd.stores`.
pub fn command_subject(context: &str) -> String {
    format!("cmd.{context}")
}

/// The subject a context's queries are sent to, e.g. `query.stores`.
pub fn query_subject(context: &str) -> String {
    format!("query.{context}")
}

/// The request header that carries a command's idempotency key (any context's `cmd.<context>`).
pub const IDEMPOTENCY_KEY_HEADER: &str = "Idempotency-Key";

/// The header a query may carry (or the `min_position` field of its body) to read its writes:
/// a command's `position` (`USERS:42`). The read model answers once it has applied that far,
/// waiting at most [`READ_YOUR_WRITES_WAIT_MS`], or answers `behind`.
pub const MIN_POSITION_HEADER: &str = "Carrier-Min-Position";

/// How long a query given a position waits for its read model, in milliseconds.
pub const READ_YOUR_WRITES_WAIT_MS: u64 = 5_000;

/// Longest idempotency key accepted, in bytes.
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

/// A command's idempotency key and what makes two sends of it "the same command": a command
/// sent again with a key seen before is answered with the event the first one recorded, and
/// decides nothing (see `carrier_storage::idempotency`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    key: String,
    fingerprint: Vec<u8>,
}

impl IdempotencyKey {
    /// `key` for a command whose parameters encode to `fingerprint`: canonical bytes of the
    /// command without the key itself (two sends are the same command when these are equal; see
    /// [`IdempotencyKey::for_command`]). Refuses an empty key, one over
    /// [`MAX_IDEMPOTENCY_KEY_LEN`] bytes, or one with control characters.
    pub fn new(key: impl Into<String>, fingerprint: Vec<u8>) -> Result<Self, ValidationError> {
        let key = key.into();
        if key.trim().is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN || key.chars().any(char::is_control) {
            return Err(ValidationError {
                field: "idempotency_key",
                problem: format!("must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes of text without control characters"),
            });
        }
        Ok(IdempotencyKey { key, fingerprint })
    }

    /// `key` for `command`, fingerprinted by its JSON with object keys sorted (so the order a
    /// client wrote its fields in does not matter).
    pub fn for_command<C: Serialize>(key: impl Into<String>, command: &C) -> Result<Self, ValidationError> {
        let value = serde_json::to_value(command).unwrap_or(serde_json::Value::Null);
        IdempotencyKey::new(key, canonical_json(&value))
    }

    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// What two sends of the key must agree on.
    pub fn fingerprint(&self) -> &[u8] {
        &self.fingerprint
    }
}

/// A request body's canonical bytes, for an idempotency key's fingerprint: its JSON with every
/// object's keys sorted, whichever encoding it came in; a body that does not decode is its own
/// bytes.
pub fn canonical_body(content_type: ContentType, body: &[u8]) -> Vec<u8> {
    let value: Option<serde_json::Value> = match content_type {
        ContentType::Json => serde_json::from_slice(body).ok(),
        ContentType::Cbor => crate::cbor::from_slice(body).ok(),
    };
    match value {
        Some(value) => canonical_json(&value),
        None => body.to_vec(),
    }
}

/// `value` as JSON with every object's keys sorted (whatever map order serde_json was built with).
fn canonical_json(value: &serde_json::Value) -> Vec<u8> {
    fn sorted(value: &serde_json::Value) -> serde_json::Value {
        match value {
            serde_json::Value::Object(map) => {
                let mut entries: Vec<(&String, &serde_json::Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k.clone(), sorted(v))).collect())
            }
            serde_json::Value::Array(items) => serde_json::Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    serde_json::to_vec(&sorted(value)).unwrap_or_default()
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
    /// The command was sent before with the same idempotency key: `event` is what that one
    /// recorded, and nothing was decided now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub replayed: bool,
    /// Where the command's events were stored, for read-your-writes: an opaque token naming the
    /// stream and sequence (`USERS:42`); a query given it as `min_position` answers only once
    /// its read model has applied that far. Event-sourced contexts send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<String>,
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
    /// The event's payload, as JSON: the entity's state after the command, as far as the event
    /// carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Value>,
}

/// Why a command was not carried out.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct CommandFailure {
    /// `bad_request`, `not_found`, `already_exists`, `rejected`, `invalid`, `unavailable` (the
    /// only one worth retrying unchanged), `idempotency_key_reused`, `idempotency_key_in_flight`
    /// (retry later), or a context's own code for a rule it names (`version_conflict`, ...).
    pub code: String,
    /// A sentence for people.
    pub message: String,
    /// Facts the client may act on (a context's own refusals: the entity's current version,
    /// say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl CommandReply {
    /// A failure with `code`.
    pub fn failed(code: &str, message: impl Into<String>) -> Self {
        CommandReply {
            ok: false,
            event: None,
            error: Some(CommandFailure { code: code.to_string(), message: message.into(), details: None }),
            replayed: false,
            position: None,
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
                error: Some(CommandFailure { code: "unavailable".into(), message: e.to_string(), details: None }),
            },
        }
    }
}

impl<T: Serialize + JsonSchema + Send + 'static> QueryReply for Found<T> {
    fn failed(code: &str, message: String) -> Self {
        Found { ok: false, found: None, error: Some(CommandFailure { code: code.to_string(), message, details: None }) }
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
/// its own row; each cache reads the fields it keeps (so `S` differs on the two sides). A
/// deleted entity is a **tombstone**: its deletion's version and no state (`null`), so that a
/// cache forgets it and treats its older events as stale, instead of keeping it for ever.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct Entity<S> {
    /// The version of its last event (its deletion's, for a tombstone).
    pub version: u64,
    /// Its state; `null` when the owner deleted it.
    #[serde(default)]
    pub state: Option<S>,
}

impl Entity<serde_json::Value> {
    /// The entity `row` at `version`, for an owner's answer.
    pub fn of<T: Serialize>(version: u64, row: &T) -> Self {
        Entity { version, state: serde_json::to_value(row).ok() }
    }

    /// The tombstone of an entity its owner deleted at `version`.
    pub fn deleted(version: u64) -> Self {
        Entity { version, state: None }
    }
}

/// The subject an owner answers [`SnapshotQuery`]s on, e.g. `query.central.snapshot`: every
/// entity of a kind, in pages by id, which a cache's full sync walks.
pub fn snapshot_subject(owner: &str) -> String {
    format!("query.{owner}.snapshot")
}

/// Most entities in one [`SnapshotPage`].
pub const MAX_SNAPSHOT_PAGE: usize = 1000;

/// Asks an owner for a page of its entities of one kind, in id order after `after`; answered
/// with a [`SnapshotPage`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SnapshotQuery {
    /// The kind of entity, as its events name it (`product`).
    pub aggregate: String,
    /// The last id of the previous page; none for the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// How many at most (1 to [`MAX_SNAPSHOT_PAGE`]).
    pub limit: usize,
}

/// One entity in a snapshot: its id, the version of its last event and its state (the owner's
/// row; each cache reads the fields it keeps), or no state for an entity the owner deleted (a
/// tombstone: its version keeps a cache from applying older events of it again).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct SnapshotEntity<S> {
    /// Its id.
    pub id: String,
    /// The version of its last event (its deletion's, for a tombstone).
    pub version: u64,
    /// Its state; `null` when the owner deleted it.
    #[serde(default)]
    pub state: Option<S>,
}

/// A page of an owner's entities: `next` is the `after` of the next page, absent on the last.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(bound(deserialize = "S: Deserialize<'de>"))]
pub struct SnapshotPage<S> {
    /// Whether the query was answered.
    pub ok: bool,
    /// The entities, in id order.
    #[serde(default)]
    pub entities: Vec<SnapshotEntity<S>>,
    /// How many entities of the kind there are in all (progress: done of total).
    #[serde(default)]
    pub total: u64,
    /// Where the next page starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Why not, when not `ok`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<CommandFailure>,
}

impl<S: Serialize + JsonSchema + Send + 'static> QueryReply for SnapshotPage<S> {
    fn failed(code: &str, message: String) -> Self {
        SnapshotPage {
            ok: false,
            entities: Vec::new(),
            total: 0,
            next: None,
            error: Some(CommandFailure { code: code.to_string(), message, details: None }),
        }
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
pub fn encode_reply<T: Serialize>(content_type: ContentType, value: &T) -> Vec<u8> {
    match content_type {
        ContentType::Json => serde_json::to_vec(value).unwrap_or_default(),
        ContentType::Cbor => crate::cbor::to_vec(value).unwrap_or_default(),
    }
}
