//! The cleartext handshake that precedes every sealed session on a direct connection.
//!
//! - fresh: dialer → `DialHello::Pake { nameplate, msg }`; listener → `ListenHello::Pake`
//!   with its SPAKE2 message and its key confirmation; dialer → `Confirm`. A wrong code
//!   fails both confirmations: "code mismatch", before any name or byte of data crosses.
//! - resume: dialer → `DialHello::Resume { rendezvous, nonce }` (rendezvous = HKDF of the
//!   stored 256-bit resume secret); listener → `ListenHello::Resume { nonce, confirm }`;
//!   dialer → `Confirm`. Keys come from the secret and both fresh nonces.
//!
//! Nothing here is secret; binary fields are hex. Frames are at most 4 KiB.

use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// Largest handshake frame.
pub const MAX_HANDSHAKE_FRAME: usize = 4096;

/// Dialer → listener, the first frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum DialHello {
    Pake {
        version: u16,
        nameplate: String,
        msg: String,
    },
    Resume {
        version: u16,
        rendezvous: String,
        nonce: String,
    },
}

/// Listener → dialer, the answer to [`DialHello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ListenHello {
    Pake {
        version: u16,
        msg: String,
        confirm: String,
    },
    Resume {
        version: u16,
        nonce: String,
        confirm: String,
    },
    /// The listener will not talk: unknown nameplate or transfer, wrong version, busy.
    Refused { kind: String, message: String },
}

/// Dialer → listener: its key confirmation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Confirm {
    pub confirm: String,
}

json_codec!(DialHello, MAX_HANDSHAKE_FRAME);
json_codec!(ListenHello, MAX_HANDSHAKE_FRAME);
json_codec!(Confirm, MAX_HANDSHAKE_FRAME);

/// Decodes a hex field of exactly `N` bytes.
pub fn hex_field<const N: usize>(text: &str) -> Result<[u8; N], ProtoError> {
    let mut out = [0u8; N];
    hex::decode_to_slice(text, &mut out).map_err(ProtoError::malformed)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips_and_rejects_junk() {
        let h = DialHello::Resume {
            version: 1,
            rendezvous: "00".repeat(32),
            nonce: "11".repeat(32),
        };
        assert_eq!(DialHello::decode(&h.encode()).unwrap(), h);
        assert!(DialHello::decode(b"\x00\x01garbage").is_err());
        assert!(DialHello::decode(&vec![b'{'; MAX_HANDSHAKE_FRAME + 1]).is_err());
        assert!(hex_field::<32>("zz").is_err());
        assert_eq!(hex_field::<2>("0a0b").unwrap(), [10, 11]);
    }
}
