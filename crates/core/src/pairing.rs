//! Pairing through the signaling server: a share code's nameplate, SPAKE2 over relayed
//! blobs, then a sealed offer of the sender's direct paths.
//!
//! Owns: the rendezvous over `skiff-signal` (allocate, wait for the claim, claim, release),
//! one PAKE attempt per nameplate, and routing relayed blobs from the one paired peer.
//! Must not: give the server anything but the nameplate, PAKE messages, confirmations and
//! sealed frames; the code's words never leave this process.

use std::future::Future;
use std::time::Duration;

use skiff_proto::code::ShareCode;
use skiff_proto::frame::{Plain, COUNTER_LEN};
use skiff_proto::handshake::DialHello;
use skiff_proto::rendezvous::SenderSignal;
use skiff_proto::signal::{DeviceId, IceServer, Nameplate, PeerId, SealedBlob};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::crypto::Secret;
use crate::session::{self, Channel};
use crate::signal::{SignalClient, SignalEvent, SignalOptions};
use crate::transport::relay;
use crate::{Error, Result};

/// How long a sender's code waits for its receiver (the server's nameplate TTL may be shorter).
pub const CLAIM_TIMEOUT: Duration = Duration::from_secs(600);

/// A connected signaling client and its event stream.
pub struct SignalLink {
    pub client: SignalClient,
    events: mpsc::Receiver<SignalEvent>,
    pub ice_servers: Vec<IceServer>,
}

fn signal_err(reason: impl Into<String>) -> Error {
    Error::Signal {
        reason: reason.into(),
    }
}

impl SignalLink {
    /// Connects to `url` and waits for the server's welcome.
    pub async fn connect(url: &str, device_name: &str) -> Result<Self> {
        let device_id = DeviceId::try_from(hex::encode(rand::random::<[u8; 16]>()))
            .map_err(|e| signal_err(e.to_string()))?;
        let name: String = device_name
            .chars()
            .take(skiff_proto::signal::MAX_LABEL_LEN / 4)
            .collect();
        let options = SignalOptions {
            url: url.to_owned(),
            device_id,
            name,
            space: None,
            backoff: Default::default(),
        };
        let (client, mut events) = SignalClient::spawn(options);
        let first = tokio::time::timeout(
            crate::signal::CONNECT_TIMEOUT + Duration::from_secs(2),
            async {
                loop {
                    match events.recv().await {
                        Some(SignalEvent::Connected { ice_servers, .. }) => return Ok(ice_servers),
                        Some(SignalEvent::Disconnected { reason, .. })
                        | Some(SignalEvent::Stopped { reason }) => {
                            return Err(signal_err(format!(
                                "cannot reach the signaling server {url}: {reason}"
                            )))
                        }
                        Some(_) => {}
                        None => return Err(signal_err("the signaling client stopped")),
                    }
                }
            },
        )
        .await;
        match first {
            Ok(Ok(ice_servers)) => Ok(Self {
                client,
                events,
                ice_servers,
            }),
            Ok(Err(e)) => {
                client.shutdown().await;
                Err(e)
            }
            Err(_) => {
                client.shutdown().await;
                Err(Error::Timeout {
                    what: "connecting to the signaling server",
                })
            }
        }
    }

    pub async fn shutdown(&self) {
        self.client.shutdown().await;
    }

    /// Runs `work` while routing blobs from `peer` into `inbox`. Losing the nameplate or
    /// the server ends it with an error.
    async fn routed<T>(
        &mut self,
        peer: &PeerId,
        nameplate: &Nameplate,
        inbox: &mpsc::Sender<SealedBlob>,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        tokio::pin!(work);
        loop {
            tokio::select! {
                biased;
                r = &mut work => return r,
                ev = self.events.recv() => match ev {
                    Some(SignalEvent::Message { from, blob }) if &from == peer => {
                        if inbox.send(blob).await.is_err() {
                            return Err(Error::ConnectionClosed);
                        }
                    }
                    Some(SignalEvent::Message { .. }) => {} // not our peer: ignored
                    Some(SignalEvent::NameplateLeft { nameplate: n, .. }) if &n == nameplate => {
                        return Err(Error::ConnectionClosed);
                    }
                    Some(SignalEvent::Disconnected { reason, .. }) | Some(SignalEvent::Stopped { reason }) => {
                        return Err(signal_err(format!("lost the signaling server: {reason}")));
                    }
                    Some(_) => {}
                    None => return Err(signal_err("the signaling client stopped")),
                },
            }
        }
    }
}

/// Sender: a new nameplate and a code for it.
pub async fn allocate_code(link: &SignalLink) -> Result<(ShareCode, Nameplate)> {
    let nameplate = link.client.allocate().await?;
    let mut rng = rand::thread_rng();
    let code = ShareCode::generate(nameplate.as_str(), &mut rng).map_err(|e| Error::BadCode {
        reason: e.to_string(),
    })?;
    Ok((code, nameplate))
}

/// Sender: waits for the receiver to claim `nameplate`, runs the one PAKE attempt, hands
/// the resume secret to `keep` (which must make the listener accept it), and only then
/// offers `tcp` addresses over the sealed channel.
pub async fn sender_pair<F: Future<Output = Result<()>>>(
    link: &mut SignalLink,
    nameplate: &Nameplate,
    code: &ShareCode,
    tcp: Vec<String>,
    keep: impl FnOnce(Secret) -> F,
    cancel: &CancellationToken,
) -> Result<()> {
    let peer = tokio::time::timeout(CLAIM_TIMEOUT, async {
        loop {
            tokio::select! {
                biased;
                () = cancel.cancelled() => return Err(Error::Cancelled),
                ev = link.events.recv() => match ev {
                    Some(SignalEvent::NameplateJoined { nameplate: n, peer }) if &n == nameplate => return Ok(peer),
                    Some(SignalEvent::NameplateExpired { nameplate: n }) if &n == nameplate => {
                        return Err(Error::Timeout { what: "waiting for the receiver: the code expired" })
                    }
                    Some(SignalEvent::Disconnected { reason, .. }) | Some(SignalEvent::Stopped { reason }) => {
                        return Err(signal_err(format!("lost the signaling server before the receiver came: {reason}")))
                    }
                    Some(_) => {}
                    None => return Err(signal_err("the signaling client stopped")),
                },
            }
        }
    })
    .await
    .map_err(|_| Error::Timeout { what: "waiting for the receiver: the code expired" })??;
    let (inbox_tx, inbox) = mpsc::channel(16);
    let conn = relay::conn(link.client.clone(), peer.clone(), inbox);
    let work = async {
        let mut conn = conn;
        let hello = session::read_hello(&mut conn).await?;
        let DialHello::Pake {
            nameplate: np, msg, ..
        } = hello
        else {
            return Err(Error::protocol("the receiver did not start with the code"));
        };
        if np != code.nameplate() {
            return Err(Error::CodeMismatch);
        }
        // One attempt per code: any failure from here on burns it.
        let (mut ch, secret) =
            session::accept_pake(conn, code, &msg)
                .await
                .map_err(|e| match e {
                    Error::CodeMismatch => e,
                    other => {
                        tracing::info!("pairing failed: {other}");
                        Error::CodeMismatch
                    }
                })?;
        keep(secret).await?;
        ch.tx
            .send_control(&SenderSignal::Paths { tcp }.encode())
            .await
    };
    let result = link.routed(&peer, nameplate, &inbox_tx, work).await;
    let _ = link.client.release(nameplate.clone()).await;
    result
}

/// Receiver: claims the code's nameplate, runs SPAKE2, and reads the sender's paths.
pub async fn receiver_pair(
    link: &mut SignalLink,
    code: &ShareCode,
) -> Result<(Secret, Vec<String>, Channel)> {
    let nameplate =
        Nameplate::try_from(code.nameplate().to_owned()).map_err(|_| Error::UnknownCode)?;
    let peer = link
        .client
        .claim(nameplate.clone())
        .await
        .map_err(|e| match e {
            Error::Signal { reason } if reason.starts_with("nameplate_unavailable") => {
                Error::UnknownCode
            }
            other => other,
        })?;
    let (inbox_tx, inbox) = mpsc::channel(16);
    let conn = relay::conn(link.client.clone(), peer.clone(), inbox);
    let work = async {
        let (mut ch, secret) = session::dial_pake(conn, code).await?;
        let frame = tokio::time::timeout(session::HANDSHAKE_TIMEOUT, ch.rx.recv())
            .await
            .map_err(|_| Error::Timeout {
                what: "waiting for the sender's paths",
            })??
            .ok_or(Error::ConnectionClosed)?;
        let Plain::Control(body) =
            Plain::parse(&frame[COUNTER_LEN..]).map_err(|e| Error::protocol(e.to_string()))?
        else {
            return Err(Error::protocol("file data on the signaling channel"));
        };
        match SenderSignal::decode(body).map_err(|e| Error::protocol(e.to_string()))? {
            SenderSignal::Paths { tcp } => Ok((secret, tcp, ch)),
            other => Err(Error::protocol(format!("unexpected signal {other:?}"))),
        }
    };
    let result = link.routed(&peer, &nameplate, &inbox_tx, work).await;
    let _ = link.client.release(nameplate).await;
    result
}

/// This machine's addresses with `port`, for a sender listening on every interface.
pub fn local_addrs(listen: &std::net::SocketAddr) -> Vec<String> {
    if !listen.ip().is_unspecified() {
        return vec![listen.to_string()];
    }
    let port = listen.port();
    let mut out: Vec<String> = if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter(|i| i.ip().is_ipv4())
        .map(|i| std::net::SocketAddr::new(i.ip(), port).to_string())
        .collect();
    // Non-loopback first: the receiver tries them in order.
    out.sort_by_key(|a| a.starts_with("127."));
    out.truncate(skiff_proto::rendezvous::MAX_PATHS);
    out
}
