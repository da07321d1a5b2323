//! The encoded state of one operator subtask.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
#[error("state cannot be encoded or decoded: {0}")]
pub struct CodecError(#[from] postcard::Error);

/// What one operator subtask stores in one checkpoint file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OperatorSubtaskState {
    /// Keyed state, one encoded blob per key group.
    #[serde(with = "keyed_blobs")]
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

/// Keyed blobs as byte strings: the same bytes on disk as a sequence of
/// `u8` in postcard (a length, then the bytes), but copied whole instead of
/// one element at a time, which makes restoring big state several times faster.
mod keyed_blobs {
    use serde::{Deserialize, Deserializer, Serializer};
    use serde_bytes::{ByteBuf, Bytes};

    pub fn serialize<S: Serializer>(blobs: &[(u16, Vec<u8>)], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(blobs.iter().map(|(group, bytes)| (group, Bytes::new(bytes))))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u16, Vec<u8>)>, D::Error> {
        let blobs: Vec<(u16, ByteBuf)> = Vec::deserialize(d)?;
        Ok(blobs.into_iter().map(|(group, bytes)| (group, bytes.into_vec())).collect())
    }
}

/// Encodes one state value (a source position, a transaction handle).
pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    Ok(postcard::to_stdvec(value)?)
}

pub fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, CodecError> {
    Ok(postcard::from_bytes(bytes)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The layout checkpoints were written with before keyed blobs were
    /// encoded as byte strings.
    #[derive(Serialize)]
    struct Before {
        keyed: Vec<(u16, Vec<u8>)>,
        list: Vec<Vec<u8>>,
        union: Vec<Vec<u8>>,
    }

    #[test]
    fn state_files_written_before_byte_string_blobs_still_decode_the_same() {
        let keyed = vec![(3, vec![1, 2, 3]), (200, vec![0; 300])];
        let before = postcard::to_stdvec(&Before { keyed: keyed.clone(), list: vec![vec![9]], union: vec![] }).unwrap();
        let state = OperatorSubtaskState { keyed, list: vec![vec![9]], union: vec![] };
        assert_eq!(state.encode(), before, "the bytes on disk are the same");
        assert_eq!(OperatorSubtaskState::decode(&before).unwrap(), state);
    }
}
