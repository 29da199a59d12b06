//! A transport over the signaling server's blob relay, to one peer.
//!
//! Owns: carrying small frames (the handshake, path offers, later SDP and ICE) as base64
//! blobs through `skiff-signal`. The server sees only these blobs: the PAKE messages, key
//! confirmations and AEAD-sealed frames. It may drop, delay or reorder them; the session
//! layer turns that into a clear error.
//! Must not: carry file data (the server rate-limits and caps messages), or accept a blob
//! from any peer but the one it was made for (the caller routes by sender).

use async_trait::async_trait;
use base64::Engine as _;
use skiff_proto::signal::{PeerId, SealedBlob};
use tokio::sync::mpsc;

use super::{Conn, FrameSink, FrameStream, PathKind};
use crate::signal::SignalClient;
use crate::{Error, Result};

/// Largest frame this transport carries (a blob must fit a 64 KiB signaling message).
pub const MAX_RELAY_FRAME: usize = 40 * 1024;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

struct Sink {
    client: SignalClient,
    to: PeerId,
}

struct Stream(mpsc::Receiver<SealedBlob>);

#[async_trait]
impl FrameSink for Sink {
    async fn send(&mut self, frame: Vec<u8>) -> Result<()> {
        if frame.len() > MAX_RELAY_FRAME {
            return Err(Error::FrameTooLarge {
                len: frame.len(),
                max: MAX_RELAY_FRAME,
            });
        }
        self.client
            .send(self.to.clone(), SealedBlob(B64.encode(frame)))
            .await
    }

    async fn close(&mut self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl FrameStream for Stream {
    async fn recv(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        let Some(blob) = self.0.recv().await else {
            return Ok(None);
        };
        let max = max.min(MAX_RELAY_FRAME);
        if blob.0.len() > max.div_ceil(3) * 4 + 4 {
            return Err(Error::FrameTooLarge {
                len: blob.0.len() * 3 / 4,
                max,
            });
        }
        B64.decode(blob.0.as_bytes())
            .map(Some)
            .map_err(|_| Error::protocol("a relayed blob is not base64"))
    }
}

/// A connection to `peer` through the signaling server. The caller feeds `inbox` with the
/// blobs that arrive from `peer` (and only from it).
pub fn conn(client: SignalClient, peer: PeerId, inbox: mpsc::Receiver<SealedBlob>) -> Conn {
    Conn {
        remote: format!("peer {}", peer.as_str()),
        sink: Box::new(Sink { client, to: peer }),
        stream: Box::new(Stream(inbox)),
        path: PathKind::Relay,
    }
}
