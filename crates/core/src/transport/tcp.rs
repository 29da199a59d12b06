//! Direct TCP transport (also the LAN path): frames as `len: u32 BE ‖ bytes`.

use std::net::{IpAddr, SocketAddr};

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Conn, FrameSink, FrameStream, PathKind};
use crate::{Error, Result};

struct Sink<W> {
    w: W,
    end: End,
    closed: bool,
}

struct Stream<R> {
    r: R,
    end: End,
    ended: bool,
}

/// How a sink's `close` ends its direction of the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum End {
    /// TCP half-close (`shutdown(SHUT_WR)`); the reader sees EOF.
    Shutdown,
    /// A length of [`END_MARKER`] and no bytes; the connection stays open for the other
    /// direction. For relays that tear down both directions on one FIN (coturn's TCP
    /// relay).
    Marker,
}

/// The length word that ends a direction under [`End::Marker`] (no frame is 4 GiB).
pub(crate) const END_MARKER: u32 = u32::MAX;

/// The `len: u32 BE ‖ bytes` framing over any byte stream (a TCP socket, a TLS stream, a
/// TURN TCP data connection).
pub(crate) fn framed<R, W>(r: R, w: W, end: End) -> (Box<dyn FrameSink>, Box<dyn FrameStream>)
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    (
        Box::new(Sink {
            w,
            end,
            closed: false,
        }),
        Box::new(Stream {
            r,
            end,
            ended: false,
        }),
    )
}

#[async_trait]
impl<W: AsyncWrite + Unpin + Send> FrameSink for Sink<W> {
    async fn send(&mut self, frame: Vec<u8>) -> Result<()> {
        if self.closed && self.end == End::Marker {
            return Err(Error::ConnectionClosed);
        }
        let len = u32::try_from(frame.len())
            .ok()
            .filter(|&l| l != END_MARKER)
            .ok_or(Error::FrameTooLarge {
                len: frame.len(),
                max: END_MARKER as usize - 1,
            })?;
        self.w.write_all(&len.to_be_bytes()).await.map_err(closed)?;
        self.w.write_all(&frame).await.map_err(closed)?;
        // A no-op on a TCP socket; pushes a TLS stream's buffered record out.
        self.w.flush().await.map_err(closed)
    }

    async fn close(&mut self) -> Result<()> {
        match self.end {
            End::Shutdown => self.w.shutdown().await.map_err(closed),
            End::Marker if self.closed => Ok(()),
            End::Marker => {
                self.closed = true;
                self.w
                    .write_all(&END_MARKER.to_be_bytes())
                    .await
                    .map_err(closed)?;
                self.w.flush().await.map_err(closed)
            }
        }
    }
}

#[async_trait]
impl<R: AsyncRead + Unpin + Send> FrameStream for Stream<R> {
    async fn recv(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        if self.ended {
            return Ok(None);
        }
        let mut len = [0u8; 4];
        match self.r.read_exact(&mut len).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(closed(e)),
        }
        let len = u32::from_be_bytes(len);
        if len == END_MARKER && self.end == End::Marker {
            self.ended = true;
            return Ok(None);
        }
        let len = len as usize;
        if len > max {
            return Err(Error::FrameTooLarge { len, max });
        }
        let mut buf = vec![0u8; len];
        self.r.read_exact(&mut buf).await.map_err(closed)?;
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
    let (sink, stream) = framed(r, w, End::Shutdown);
    Conn {
        sink,
        stream,
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
