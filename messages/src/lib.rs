//! Carrier's wire contract: what a producer in any language puts on NATS, and how Carrier reads it.
//!
//! An event travels as one NATS message. Carrier writes it [`structured`]: the [`Envelope`] and
//! the payload in one CBOR map in the body (a CloudEvent in CBOR), only `Nats-Msg-Id` in the
//! headers. It also reads Carrier's older header framing and CloudEvents in binary and structured
//! JSON mode ([`cloudevents`]). This crate is the only one that knows any encoding; every other
//! crate handles typed values.
//!
//! - [`envelope`]: an event's metadata ([`Envelope`], [`EventId`], [`ContentType`]) and
//!   [`Envelope::read`], which recognises the framing.
//! - [`codec`]: turning an event into an [`EncodedEvent`] and a received message back into a
//!   [`Decoded`] event, with a [`DecodeError`] that says why when it cannot.
//! - [`catalog`]: a context's events without their type ([`EventCatalog`]): how a generic
//!   producer (`carrier publish`) writes one from JSON.
//! - [`request`]: commands over request/reply (`cmd.<context>`) and their [`request::CommandReply`].
//! - [`cbor`]: CBOR helpers for the other crates' own records (redb rows), so that they never
//!   depend on the CBOR library themselves.
//!
//! `docs/wire-contract.md` is the same contract written for producers.

pub mod asyncapi;
pub mod catalog;
pub mod cbor;
pub mod cloudevents;
pub mod codec;
pub mod envelope;
mod error;
mod framing;
mod limits;
pub mod request;
pub mod structured;
pub mod trace;

pub use catalog::EventCatalog;
pub use codec::{
    check, Causality, DecodeError, Decoded, DomainEvent, EncodedEvent, NoEvents, Validate, ValidationError, WireFormat,
};
pub use envelope::{ContentType, Envelope, EventId};
pub use request::{CommandReply, Found, QueryReply};
/// The schema derive payloads, commands and queries need (`#[derive(JsonSchema)]`).
pub use schemars;
