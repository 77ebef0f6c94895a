//! The byte format of every value berth stores in redb: one leading format-version
//! byte, then the postcard encoding of the record. A later format adds a version and a
//! decoder for it here; values written by older builds stay readable.

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::ConsensusError;

/// The format version this build writes.
pub(crate) const FORMAT_V1: u8 = 1;

/// Encodes `value` in the current format.
pub(crate) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    // postcard only fails on writer errors (none for a Vec) or on types serde cannot
    // express (none of ours): a failure here is a bug, not an input problem.
    postcard::to_io(value, &mut out).expect("postcard encodes berth records into a Vec");
    out
}

/// Decodes a value written by [`encode`] in any format this build knows.
pub(crate) fn decode<T: DeserializeOwned>(
    what: &'static str,
    bytes: &[u8],
) -> Result<T, ConsensusError> {
    match bytes.split_first() {
        Some((&FORMAT_V1, rest)) => {
            postcard::from_bytes(rest).map_err(|source| ConsensusError::Codec { what, source })
        }
        Some((&version, _)) => Err(ConsensusError::UnknownFormat { what, version }),
        None => Err(ConsensusError::UnknownFormat { what, version: 0 }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_versions() {
        let v: (u32, String) = (7, "x".into());
        let bytes = encode(&v);
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(decode::<(u32, String)>("pair", &bytes).unwrap(), v);

        let mut future = bytes.clone();
        future[0] = 2;
        assert!(matches!(
            decode::<(u32, String)>("pair", &future),
            Err(ConsensusError::UnknownFormat { version: 2, .. })
        ));
        assert!(matches!(
            decode::<(u32, String)>("pair", &[]),
            Err(ConsensusError::UnknownFormat { version: 0, .. })
        ));
        assert!(matches!(
            decode::<(u32, String)>("pair", &[FORMAT_V1, 0xff]),
            Err(ConsensusError::Codec { .. })
        ));
    }
}
