//! Transports: ordered, reliable message streams that carry frames between two peers.
//!
//! Owns: the `FrameSink`/`FrameStream` traits every path implements (direct TCP now, the
//! in-memory pair for tests, WebRTC later) and the path label reported to users.
//! Must not: look inside frames, buffer without bound, or accept a frame over `max`.

pub mod mem;
pub mod relay;
pub mod tcp;
pub mod turn_tcp;
pub mod webrtc;

use async_trait::async_trait;

use crate::Result;

/// Sending half of a transport.
#[async_trait]
pub trait FrameSink: Send {
    /// Sends one frame; waits while the transport is full (back-pressure).
    async fn send(&mut self, frame: Vec<u8>) -> Result<()>;
    /// Flushes and closes the sending direction.
    async fn close(&mut self) -> Result<()>;
}

/// Receiving half of a transport.
#[async_trait]
pub trait FrameStream: Send {
    /// The next frame, `None` on a clean close, an error for a frame over `max` bytes.
    async fn recv(&mut self, max: usize) -> Result<Option<Vec<u8>>>;
}

/// How the bytes travel, as shown to users and in `--json` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    Lan,
    Direct,
    Memory,
    /// Through the signaling server's relay: handshakes and path offers only, never data.
    Relay,
    /// Relayed by a TURN server reached over UDP, TCP or TLS.
    TurnUdp,
    TurnTcp,
    TurnTls,
}

impl PathKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PathKind::Lan => "lan",
            PathKind::Direct => "direct",
            PathKind::Memory => "memory",
            PathKind::Relay => "relay",
            PathKind::TurnUdp => "turn-udp",
            PathKind::TurnTcp => "turn-tcp",
            PathKind::TurnTls => "turn-tls",
        }
    }
}

/// An established connection to a peer.
pub struct Conn {
    pub sink: Box<dyn FrameSink>,
    pub stream: Box<dyn FrameStream>,
    pub path: PathKind,
    /// Human-readable remote address, for logs and `list`.
    pub remote: String,
}
