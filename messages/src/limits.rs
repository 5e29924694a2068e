//! The numbers the wire contract promises, in one place that depends on nothing.

/// The schema version Carrier writes and the only one it reads today.
pub const SCHEMA_VERSION: u32 = 1;

/// The largest body Carrier decodes (NATS's own default maximum payload).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;
