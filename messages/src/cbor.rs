//! CBOR for Carrier's own records: the rows the storage crate keeps in redb.
//!
//! These helpers exist so that the choice of CBOR library stays inside this crate.

use serde::{de::DeserializeOwned, Serialize};

/// Nesting deeper than this is refused when decoding, so hostile input cannot exhaust the stack.
pub const MAX_NESTING: usize = 64;

/// Why a value could not be turned into CBOR or back.
#[derive(Debug, thiserror::Error)]
#[error("cbor: {0}")]
pub struct CborError(String);

/// Encodes `value` as CBOR.
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, CborError> {
    let mut out = Vec::with_capacity(64);
    ciborium::into_writer(value, &mut out).map_err(|e| CborError(e.to_string()))?;
    Ok(out)
}

/// Decodes a CBOR value, refusing nesting deeper than [`MAX_NESTING`].
pub fn from_slice<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CborError> {
    ciborium::de::from_reader_with_recursion_limit(bytes, MAX_NESTING).map_err(|e| CborError(e.to_string()))
}
