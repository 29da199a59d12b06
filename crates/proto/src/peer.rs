//! Peer messages after the handshake, one enum per direction, JSON inside sealed frames.
//!
//! Flow (the same for a fresh transfer and a resume):
//! - sender → `Offer` (transfer id + manifest); receiver → `Accept { have }` or `Decline`;
//! - receiver → `Credit` (bytes it can take); sender → chunk frames (see `frame`) within
//!   credit, `FileEnd` after each file's last chunk; receiver → `Retry` for a bad chunk,
//!   `FileOk` (with the content SHA-256) once a file is verified and renamed, `Complete` when every file is;
//! - either side → `Error` or `Cancel` at any time.
//!
//! Unknown message types fail to decode: the other side is then told and disconnected.

use serde::{Deserialize, Serialize};

use crate::manifest::Manifest;
use crate::ProtoError;

/// Sender → receiver.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum SenderMsg {
    Offer {
        transfer: String,
        sender: String,
        manifest: Manifest,
    },
    /// After a file's last chunk. `sha256` is the chunk-list root: SHA-256 over the
    /// concatenated SHA-256 digests of all the file's chunks, in order (hex).
    FileEnd {
        file: u32,
        sha256: String,
    },
    Error {
        kind: String,
        message: String,
    },
    Cancel,
    /// Keeps the session alive while the sender re-reads data the receiver already has.
    Ping,
}

/// Receiver → sender.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum ReceiverMsg {
    /// Accepts the offer; `have` lists what is already safe on disk (empty when fresh).
    Accept {
        have: Vec<Have>,
    },
    Decline,
    Credit {
        bytes: u64,
    },
    Retry {
        file: u32,
        index: u64,
    },
    /// A file is verified and in place; `sha256` is the SHA-256 of its content (hex).
    FileOk {
        file: u32,
        sha256: String,
    },
    Complete,
    Error {
        kind: String,
        message: String,
    },
    Cancel,
}

/// What the receiver already holds of one file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Have {
    pub file: u32,
    /// The file is verified and in its final place: send nothing of it.
    pub complete: bool,
    /// Chunk bitmap, bit `i` (LSB first within each byte) set = chunk `i` held; base64.
    pub chunks: String,
}

json_codec!(SenderMsg);
json_codec!(ReceiverMsg);

/// Encodes a chunk bitmap for [`Have::chunks`].
pub fn encode_bitmap(bits: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD_NO_PAD.encode(bits)
}

/// Decodes a [`Have::chunks`] bitmap for a file of `chunks` chunks.
pub fn decode_bitmap(text: &str, chunks: u64) -> Result<Vec<u8>, ProtoError> {
    use base64::Engine as _;
    let want = usize::try_from(chunks.div_ceil(8)).map_err(ProtoError::malformed)?;
    if text.len() > want.saturating_mul(4) / 3 + 4 {
        return Err(ProtoError::malformed("bitmap longer than the file"));
    }
    let bits = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(text)
        .map_err(ProtoError::malformed)?;
    if bits.len() != want {
        return Err(ProtoError::malformed(
            "bitmap length does not match the file",
        ));
    }
    Ok(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_types_are_errors() {
        assert!(SenderMsg::decode(br#"{"type":"launch_missiles"}"#).is_err());
        assert!(ReceiverMsg::decode(br#"{"type":"push_file","path":"x"}"#).is_err());
    }

    #[test]
    fn round_trips() {
        let m = ReceiverMsg::Accept {
            have: vec![Have {
                file: 3,
                complete: false,
                chunks: encode_bitmap(&[0b101]),
            }],
        };
        assert_eq!(ReceiverMsg::decode(&m.encode()).unwrap(), m);
        let text = String::from_utf8(m.encode()).unwrap();
        assert!(text.starts_with(r#"{"type":"accept""#), "{text}");
    }

    #[test]
    fn bitmap_length_is_checked() {
        let b = encode_bitmap(&[0xff, 0x01]);
        assert_eq!(decode_bitmap(&b, 9).unwrap(), vec![0xff, 0x01]);
        assert!(decode_bitmap(&b, 100).is_err());
        assert!(decode_bitmap(&"A".repeat(10_000), 1).is_err());
    }
}
