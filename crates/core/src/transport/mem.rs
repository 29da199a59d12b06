//! In-memory transport for tests: two bounded channels.

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Conn, FrameSink, FrameStream, PathKind};
use crate::{Error, Result};

struct Sink(Option<mpsc::Sender<Vec<u8>>>);
struct Stream(mpsc::Receiver<Vec<u8>>);

#[async_trait]
impl FrameSink for Sink {
    async fn send(&mut self, frame: Vec<u8>) -> Result<()> {
        let tx = self.0.as_ref().ok_or(Error::ConnectionClosed)?;
        tx.send(frame).await.map_err(|_| Error::ConnectionClosed)
    }

    async fn close(&mut self) -> Result<()> {
        self.0 = None;
        Ok(())
    }
}

#[async_trait]
impl FrameStream for Stream {
    async fn recv(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        match self.0.recv().await {
            Some(f) if f.len() > max => Err(Error::FrameTooLarge { len: f.len(), max }),
            other => Ok(other),
        }
    }
}

/// Two connected ends; each direction holds at most `capacity` frames.
pub fn pair(capacity: usize) -> (Conn, Conn) {
    let (a_tx, b_rx) = mpsc::channel(capacity);
    let (b_tx, a_rx) = mpsc::channel(capacity);
    let end = |tx, rx, name: &str| Conn {
        sink: Box::new(Sink(Some(tx))),
        stream: Box::new(Stream(rx)),
        path: PathKind::Memory,
        remote: name.to_owned(),
    };
    (end(a_tx, a_rx, "mem:b"), end(b_tx, b_rx, "mem:a"))
}
