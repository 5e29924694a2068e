//! CBOR for Carrier's own records: the rows the storage crate keeps in redb.
//!
//! These helpers exist so that the choice of CBOR library stays inside this crate.

use serde::{de::DeserializeOwned, Serialize};

pub use crate::codec::body_bytes as bytes;

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

/// Decodes any CBOR value into JSON, for tools that show stored rows without knowing their type
/// (`carrier inspect`). Byte strings become lowercase hex; map keys that are not text become
/// their JSON text.
pub fn to_json(bytes: &[u8]) -> Result<serde_json::Value, CborError> {
    let value: ciborium::Value = from_slice(bytes)?;
    Ok(value_to_json(value))
}

fn value_to_json(value: ciborium::Value) -> serde_json::Value {
    use ciborium::Value as C;
    use serde_json::Value as J;
    match value {
        C::Integer(i) => {
            let i = i128::from(i);
            match (i64::try_from(i), u64::try_from(i)) {
                (Ok(n), _) => J::from(n),
                (_, Ok(n)) => J::from(n),
                _ => J::String(i.to_string()),
            }
        }
        C::Bytes(b) => J::String(b.iter().map(|x| format!("{x:02x}")).collect()),
        C::Float(f) => serde_json::Number::from_f64(f).map(J::Number).unwrap_or(J::Null),
        C::Text(t) => J::String(t),
        C::Bool(b) => J::Bool(b),
        C::Null => J::Null,
        C::Tag(_, inner) => value_to_json(*inner),
        C::Array(items) => J::Array(items.into_iter().map(value_to_json).collect()),
        C::Map(entries) => J::Object(
            entries
                .into_iter()
                .map(|(k, v)| {
                    let key = match value_to_json(k) {
                        J::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, value_to_json(v))
                })
                .collect(),
        ),
        _ => J::Null,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn any_row_reads_as_json() {
        #[derive(serde::Serialize)]
        struct Row {
            name: &'static str,
            price: i64,
            tags: Vec<u8>,
        }
        let bytes = super::to_vec(&Row { name: "Kettle", price: -5, tags: vec![1, 2] }).expect("encodes");
        let json = super::to_json(&bytes).expect("decodes");
        assert_eq!(json, serde_json::json!({ "name": "Kettle", "price": -5, "tags": [1, 2] }));
        assert!(super::to_json(&[0xff, 0x00]).is_err());
    }
}
