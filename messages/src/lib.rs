//! Carrier's wire contract: what a producer in any language puts on NATS, and how Carrier reads it.
//!
//! An event travels as one NATS message. Carrier writes it `structured`: the [`Envelope`] and
//! the payload in one CBOR map in the body (a CloudEvent in CBOR), only `Nats-Msg-Id` in the
//! headers. It also reads Carrier's older header framing and CloudEvents in binary and structured
//! JSON mode (`cloudevents`). This crate is the only one that knows any encoding; every other
//! crate handles typed values.
//!
//! Its modules are private; everything is named from the root:
//! - **Events**: [`domain_events!`] declares a context's events ([`DomainEvent`]), each payload
//!   [`Validate`]s itself with the field checks in [`check`]; an event travels with its
//!   [`Envelope`] ([`EventId`], [`ContentType`], [`header`] names, [`TraceContext`]) and is
//!   [`Decoded`] (or refused with a [`DecodeError`]) and encoded into an [`EncodedEvent`] in a
//!   [`WireFormat`]. [`Causality`] carries a command's correlation and idempotency key into the
//!   events it decides; [`NoEvents`] is what a context that publishes nothing publishes.
//! - **Catalogues**: [`EventCatalog`], a context's events without their type: how a generic
//!   producer (`carrier publish`) writes a [`JsonEvent`].
//! - **Requests**: commands on [`command_subject`] answered with a [`CommandReply`] (or a
//!   [`CommandFailure`]), queries on [`query_subject`] answered with a [`QueryReply`] such as
//!   [`Found`], an owner's entity endpoint ([`entity_subject`], [`EntityQuery`], [`Entity`]) and
//!   snapshot pages ([`snapshot_subject`], [`SnapshotQuery`], [`SnapshotPage`]);
//!   [`IdempotencyKey`], [`decode_request`] and [`encode_reply`].
//! - [`cbor`]: CBOR helpers for the other crates' own records (redb rows), so that they never
//!   depend on the CBOR library themselves.
//! - [`asyncapi`]: the parts of the AsyncAPI document each context contributes.
//!
//! `docs/wire-contract.md` is the same contract written for producers.

pub mod asyncapi;
mod catalog;
pub mod cbor;
mod cloudevents;
mod codec;
mod envelope;
mod error;
mod framing;
mod limits;
mod request;
mod structured;
mod trace;

// Events: declaring them, checking them, their metadata.
pub use codec::{
    check, Causality, DecodeError, Decoded, DomainEvent, EncodeError, EncodedEvent, NoEvents, Validate,
    ValidationError, WireFormat, MAX_BODY_BYTES,
};
pub use envelope::{header, ContentType, Envelope, EventId, MAX_ID_LEN, SCHEMA_VERSION};
pub use trace::{TraceContext, TraceparentError, TRACEPARENT};

// A context's events without their type, for generic producers.
pub use catalog::{CatalogError, EventCatalog, JsonEvent};

// Commands and queries over request/reply.
pub use request::{
    canonical_body, command_subject, decode_request, encode_reply, entity_subject, query_subject, snapshot_subject,
    CommandFailure, CommandReply, Entity, EntityQuery, Found, IdempotencyKey, QueryReply, RecordedEvent, RequestError,
    SnapshotEntity, SnapshotPage, SnapshotQuery, IDEMPOTENCY_KEY_HEADER, MAX_IDEMPOTENCY_KEY_LEN, MAX_SNAPSHOT_PAGE,
    MIN_POSITION_HEADER, READ_YOUR_WRITES_WAIT_MS,
};

// The wire framings, for tools that write events without a Rust type (tests, bridges).
pub use structured::{encode as encode_structured, CLOUDEVENTS_CBOR};

/// The schema derive payloads, commands and queries need (`#[derive(JsonSchema)]`).
pub use schemars;

/// What [`domain_events!`] expands to; not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::codec::{decode_body, decode_upcast, encode_body};
    pub use crate::envelope::clip;
}
