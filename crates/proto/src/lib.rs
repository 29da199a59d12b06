//! Skiff wire types: share codes, the direct-connection handshake, peer messages,
//! the manifest and the data-frame layout.
//!
//! Owns: every byte layout that crosses a process boundary, with its version and limits.
//! Must not: do I/O, hold crypto state, or depend on tokio.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

/// `encode`/`decode` for a serde JSON wire type; with `max`, longer input is refused before parsing.
macro_rules! json_codec {
    ($t:ty) => {
        json_codec!($t, usize::MAX);
    };
    ($t:ty, $max:expr) => {
        impl $t {
            pub fn encode(&self) -> Vec<u8> {
                // Plain structs and enums with string keys always serialise.
                serde_json::to_vec(self).unwrap_or_default()
            }
            pub fn decode(bytes: &[u8]) -> Result<Self, $crate::ProtoError> {
                if bytes.len() > $max {
                    return Err($crate::ProtoError::TooLarge {
                        len: bytes.len(),
                        max: $max,
                    });
                }
                serde_json::from_slice(bytes).map_err($crate::ProtoError::malformed)
            }
        }
    };
}

pub mod code;
pub mod error;
pub mod frame;
pub mod handshake;
pub mod manifest;
pub mod peer;
pub mod rendezvous;
pub mod signal;

pub use error::ProtoError;

/// Version of the peer protocol (handshake, sealed frames, peer messages).
/// v1: first release.
pub const PEER_VERSION: u16 = 1;
