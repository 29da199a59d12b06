//! Messages of the sealed signaling channel: after the code's SPAKE2 over the signaling
//! relay, before the data connection. They travel as sealed control frames, so the server
//! can neither read nor change them.
//!
//! - sender → `Paths`: where the receiver can reach it directly (TCP addresses now;
//!   WebRTC descriptions later). The receiver then connects and authenticates the data
//!   connection with the resume secret both derived from the PAKE.

use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// Most addresses a sender may offer.
pub const MAX_PATHS: usize = 32;

/// Sender → receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum SenderSignal {
    Paths { tcp: Vec<String> },
}

impl SenderSignal {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, ProtoError> {
        let msg: Self = serde_json::from_slice(bytes).map_err(ProtoError::malformed)?;
        let SenderSignal::Paths { tcp } = &msg;
        if tcp.len() > MAX_PATHS || tcp.iter().any(|a| a.len() > 64) {
            return Err(ProtoError::malformed("too many or too long addresses"));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip_and_are_bounded() {
        let m = SenderSignal::Paths {
            tcp: vec!["10.0.0.2:9000".into()],
        };
        assert_eq!(SenderSignal::decode(&m.encode()).unwrap(), m);
        let many = SenderSignal::Paths {
            tcp: vec!["1.2.3.4:5".into(); MAX_PATHS + 1],
        };
        assert!(SenderSignal::decode(&many.encode()).is_err());
        assert!(SenderSignal::decode(br#"{"type":"other"}"#).is_err());
    }
}
