//! Carrier's wire contract: what a producer in any language puts on NATS, and how Carrier reads it.
//!
//! An event travels as one NATS message: its [`Envelope`] in headers, its payload in the body as
//! CBOR (or JSON, for producers that cannot write CBOR). This crate is the only one that knows
//! either encoding; every other crate handles typed values.
//!
//! - [`envelope`]: the headers every event carries ([`Envelope`], [`EventId`], [`ContentType`]).
//! - [`customers`]: the customers context's events, commands and queries.
//! - [`baskets`], [`ordering`], [`depot`], [`payments`]: the order flow's events and commands.
//! - [`search`]: the search read model's queries.
//! - [`stores`]: the stores context's events, named after the MallBots design.
//! - [`codec`]: turning an event into an [`EncodedEvent`] and a received message back into a
//!   [`Decoded`] event, with a [`DecodeError`] that says why when it cannot.
//! - [`request`]: commands over request/reply (`cmd.<context>`) and their [`request::CommandReply`].
//! - [`cbor`]: CBOR helpers for the other crates' own records (redb rows), so that they never
//!   depend on the CBOR library themselves.
//!
//! `docs/wire-contract.md` is the same contract written for producers.

pub mod asyncapi;
pub mod baskets;
pub mod cbor;
pub mod codec;
pub mod customers;
pub mod depot;
pub mod envelope;
mod error;
mod limits;
pub mod ordering;
pub mod payments;
pub mod request;
pub mod search;
pub mod stores;
pub mod trace;

pub use codec::{
    check, Causality, DecodeError, Decoded, DomainEvent, EncodedEvent, NoEvents, Validate, ValidationError,
};
pub use envelope::{ContentType, Envelope, EventId};
pub use request::{CommandReply, Found, QueryReply};
/// The schema derive payloads, commands and queries need (`#[derive(JsonSchema)]`).
pub use schemars;
pub use stores::StoresEvent;
