//! Direct TCP transport (also the LAN path): frames as `len: u32 BE ‖ bytes`.

use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};

use super::{Conn, FrameSink, FrameStream, PathKind};
use crate::{Error, Result};

struct Sink(OwnedWriteHalf);
struct Stream(OwnedReadHalf);

#[async_trait]
impl FrameSink for Sink {
    async fn send(&mut self, frame: Vec<u8>) -> Result<()> {
        let len = u32::try_from(frame.len()).map_err(|_| Error::FrameTooLarge {
            len: frame.len(),
            max: u32::MAX as usize,
        })?;
        self.0.write_all(&len.to_be_bytes()).await.map_err(closed)?;
        self.0.write_all(&frame).await.map_err(closed)
    }

    async fn close(&mut self) -> Result<()> {
        self.0.shutdown().await.map_err(closed)
    }
}

#[async_trait]
impl FrameStream for Stream {
    async fn recv(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        let mut len = [0u8; 4];
        match self.0.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(closed(e)),
        }
        let len = u32::from_be_bytes(len) as usize;
        if len > max {
            return Err(Error::FrameTooLarge { len, max });
        }
        let mut buf = vec![0u8; len];
        self.0.read_exact(&mut buf).await.map_err(closed)?;
        Ok(Some(buf))
    }
}

fn closed(e: std::io::Error) -> Error {
    tracing::debug!("tcp: {e}");
    Error::ConnectionClosed
}

fn path_for(addr: &SocketAddr) -> PathKind {
    let local = match addr.ip() {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    };
    if local {
        PathKind::Lan
    } else {
        PathKind::Direct
    }
}

/// Wraps an accepted or dialed TCP stream.
pub fn wrap(stream: TcpStream) -> Conn {
    let _ = stream.set_nodelay(true);
    let remote = stream.peer_addr().ok();
    let path = remote.as_ref().map(path_for).unwrap_or(PathKind::Direct);
    let (r, w) = stream.into_split();
    Conn {
        sink: Box::new(Sink(w)),
        stream: Box::new(Stream(r)),
        path,
        remote: remote.map(|a| a.to_string()).unwrap_or_default(),
    }
}

/// Dials `addr`.
pub async fn dial(addr: &str) -> Result<Conn> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| Error::io(format!("connecting to {addr}"), e))?;
    Ok(wrap(stream))
}

/// Binds a listener on `addr`.
pub async fn listen(addr: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|e| Error::io(format!("listening on {addr}"), e))
}
