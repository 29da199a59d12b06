//! Frame layouts on a transport (an ordered, reliable message stream).
//!
//! - Sealed frame: `counter: u64 BE ‖ AES-256-GCM(ciphertext ‖ tag)`; the nonce is
//!   `0u32 ‖ counter`, one key per direction, so a (key, nonce) pair is never reused.
//!   The receiver accepts only the next counter: replays, gaps and reordering are errors.
//! - Plaintext inside: `kind: u8 ‖ body`; kind 1 = control JSON (`peer`), kind 2 = chunk:
//!   `file: u32 BE ‖ index: u64 BE ‖ sha256: [u8; 32] ‖ data`. Chunks never travel as JSON.

use crate::ProtoError;

/// Largest frame any transport carries (a manifest of up to 16 MiB plus room).
pub const MAX_FRAME: usize = (16 << 20) + 4096;
/// Bytes of the counter prefix of a sealed frame.
pub const COUNTER_LEN: usize = 8;
/// Bytes of the AEAD tag.
pub const TAG_LEN: usize = 16;
/// Plaintext kind byte of a control message.
pub const KIND_CONTROL: u8 = 1;
/// Plaintext kind byte of a chunk.
pub const KIND_CHUNK: u8 = 2;
/// Bytes of a chunk header after the kind byte.
pub const CHUNK_HEADER_LEN: usize = 4 + 8 + 32;

/// Header of a chunk frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub file: u32,
    pub index: u64,
    pub sha256: [u8; 32],
}

impl ChunkHeader {
    /// Writes `kind ‖ header` in front of the chunk data.
    pub fn write_prefix(&self, out: &mut Vec<u8>) {
        out.push(KIND_CHUNK);
        out.extend_from_slice(&self.file.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.sha256);
    }
}

/// A decoded plaintext.
#[derive(Debug, PartialEq, Eq)]
pub enum Plain<'a> {
    Control(&'a [u8]),
    Chunk { header: ChunkHeader, data: &'a [u8] },
}

impl<'a> Plain<'a> {
    pub fn parse(plain: &'a [u8]) -> Result<Self, ProtoError> {
        match plain.split_first() {
            Some((&KIND_CONTROL, body)) => Ok(Plain::Control(body)),
            Some((&KIND_CHUNK, body)) => {
                if body.len() < CHUNK_HEADER_LEN {
                    return Err(ProtoError::malformed("short chunk header"));
                }
                let (head, data) = body.split_at(CHUNK_HEADER_LEN);
                let mut file = [0u8; 4];
                let mut index = [0u8; 8];
                let mut sha256 = [0u8; 32];
                file.copy_from_slice(&head[..4]);
                index.copy_from_slice(&head[4..12]);
                sha256.copy_from_slice(&head[12..]);
                let header = ChunkHeader {
                    file: u32::from_be_bytes(file),
                    index: u64::from_be_bytes(index),
                    sha256,
                };
                Ok(Plain::Chunk { header, data })
            }
            Some((kind, _)) => Err(ProtoError::malformed(format!("unknown frame kind {kind}"))),
            None => Err(ProtoError::malformed("empty frame")),
        }
    }
}

/// Splits a sealed frame into its counter and ciphertext.
pub fn split_sealed(frame: &[u8]) -> Result<(u64, &[u8]), ProtoError> {
    if frame.len() < COUNTER_LEN + TAG_LEN {
        return Err(ProtoError::malformed("sealed frame too short"));
    }
    let (counter, rest) = frame.split_at(COUNTER_LEN);
    let mut c = [0u8; 8];
    c.copy_from_slice(counter);
    Ok((u64::from_be_bytes(c), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_header_round_trips() {
        let h = ChunkHeader {
            file: 7,
            index: 1 << 40,
            sha256: [9; 32],
        };
        let mut buf = Vec::new();
        h.write_prefix(&mut buf);
        buf.extend_from_slice(b"data");
        assert_eq!(
            Plain::parse(&buf).unwrap(),
            Plain::Chunk {
                header: h,
                data: b"data"
            }
        );
    }

    #[test]
    fn malformed_frames_are_errors() {
        assert!(Plain::parse(&[]).is_err());
        assert!(Plain::parse(&[9, 1, 2]).is_err());
        assert!(Plain::parse(&[KIND_CHUNK, 1, 2]).is_err());
        assert!(split_sealed(&[0; 5]).is_err());
    }
}
