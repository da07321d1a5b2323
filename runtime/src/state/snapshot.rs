//! The encoded state of one operator subtask.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("state cannot be encoded or decoded: {0}")]
pub struct CodecError(#[from] postcard::Error);

/// What one operator subtask stores in one checkpoint file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OperatorSubtaskState {
    /// Keyed state, one encoded blob per key group.
    pub keyed: Vec<(u16, Vec<u8>)>,
    /// Operator list state: entries are dealt round-robin on restore.
    pub list: Vec<Vec<u8>>,
    /// Union list state: every subtask gets every entry on restore.
    pub union: Vec<Vec<u8>>,
}

impl OperatorSubtaskState {
    pub fn is_empty(&self) -> bool {
        self.keyed.is_empty() && self.list.is_empty() && self.union.is_empty()
    }

    pub fn encode(&self) -> Vec<u8> {
        // Encoding plain byte vectors into a growable Vec cannot fail.
        postcard::to_stdvec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<OperatorSubtaskState, CodecError> {
        Ok(postcard::from_bytes(bytes)?)
    }
}

/// Encodes one state value (a source position, a transaction handle).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_stdvec(value)?)
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(postcard::from_bytes(bytes)?)
}
