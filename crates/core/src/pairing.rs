//! Pairing through the signaling server: a share code's nameplate, SPAKE2 over relayed
//! blobs, a sealed offer of the sender's direct paths; then the transfer's rendezvous,
//! where the receiver finds the sender again (first connection, resume after a restart
//! or a network change) and both negotiate the data path.
//!
//! Owns: the meetings over `skiff-signal` (allocate, wait for the claim, claim, release;
//! the rendezvous space derived one-way from the resume secret), one PAKE attempt per
//! nameplate, the resume handshake at the rendezvous, and routing relayed blobs by peer.
//! Must not: give the server anything but the nameplate, PAKE messages, confirmations and
//! sealed frames; the code's words never leave this process.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use skiff_proto::code::ShareCode;
use skiff_proto::handshake::DialHello;
use skiff_proto::rendezvous::SenderSignal;
use skiff_proto::signal::{
    DeviceId, IceServer, Nameplate, PeerId, PeerInfo, SealedBlob, SpaceName,
};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::crypto::Secret;
use crate::device::{self, DeviceKey, DeviceSession};
use crate::paths;
use crate::session::{self, Channel};
use crate::signal::{SignalClient, SignalEvent, SignalOptions};
use crate::transport::webrtc::RtcConfig;
use crate::transport::{relay, Conn};
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
    /// Connects to `url` in presence `space` and waits for the server's welcome.
    /// Without a space, the link gets a private one of its own: a code's pairing link
    /// must not show up in anybody's list of devices.
    pub async fn connect(url: &str, device_name: &str, space: Option<SpaceName>) -> Result<Self> {
        let space = match space {
            Some(s) => s,
            None => {
                SpaceName::try_from(format!("pair-{}", hex::encode(rand::random::<[u8; 12]>())))
                    .map_err(signal_err)?
            }
        };
        let id = hex::encode(rand::random::<[u8; 16]>());
        Self::connect_as(url, &id, device_name, Some(space)).await
    }

    /// [`SignalLink::connect`] under a stable device id (peer-list sends); `space` `None`
    /// is the server's default grouping (the devices behind one public address).
    pub async fn connect_as(
        url: &str,
        device_id: &str,
        device_name: &str,
        space: Option<SpaceName>,
    ) -> Result<Self> {
        let device_id =
            DeviceId::try_from(device_id.to_owned()).map_err(|e| signal_err(e.to_string()))?;
        let name: String = device_name
            .chars()
            .take(skiff_proto::signal::MAX_LABEL_LEN / 4)
            .collect();
        let options = SignalOptions {
            url: url.to_owned(),
            device_id,
            name,
            space,
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

    /// The other peers in the space (the snapshot the server sends after its welcome).
    pub async fn peers(&mut self) -> Result<Vec<PeerInfo>> {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match self.events.recv().await {
                    Some(SignalEvent::Peers { list }) => return Ok(list),
                    Some(SignalEvent::Stopped { reason })
                    | Some(SignalEvent::Disconnected { reason, .. }) => {
                        return Err(signal_err(format!("lost the signaling server: {reason}")))
                    }
                    Some(_) => {}
                    None => return Err(signal_err("the signaling client stopped")),
                }
            }
        })
        .await
        .map_err(|_| Error::Timeout {
            what: "waiting for the list of peers",
        })?
    }

    /// Runs `work` while routing blobs from `peer` into `inbox`. Losing the peer, the
    /// nameplate or the server ends it with an error.
    async fn routed<T>(
        &mut self,
        peer: &PeerId,
        nameplate: Option<&Nameplate>,
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
                    Some(SignalEvent::NameplateLeft { nameplate: n, .. }) if Some(&n) == nameplate => {
                        return Err(Error::ConnectionClosed);
                    }
                    Some(SignalEvent::PeerLeft { peer_id }) if &peer_id == peer => {
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
    let result = link.routed(&peer, Some(nameplate), &inbox_tx, work).await;
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
        let tcp = paths::read_paths(&mut ch).await?;
        Ok((secret, tcp, ch))
    };
    let result = link.routed(&peer, Some(&nameplate), &inbox_tx, work).await;
    let _ = link.client.release(nameplate).await;
    // The sender leaves the nameplate as soon as its one PAKE attempt fails: before the
    // paths arrive, that means it did not accept our half of the exchange.
    result.map_err(|e| match e {
        Error::ConnectionClosed => Error::CodeMismatch,
        other => other,
    })
}

/// Most receivers a sender negotiates with at once at its rendezvous.
const MAX_RENDEZVOUS_PEERS: usize = 4;
/// How long a receiver waits for the sender to show up at the rendezvous.
pub const RENDEZVOUS_WAIT: Duration = Duration::from_secs(10);

/// The signaling server's ICE servers (ephemeral TURN credentials) in WebRTC's form.
pub fn rtc_ice(servers: &[IceServer]) -> Vec<crate::transport::webrtc::IceServer> {
    servers
        .iter()
        .map(|s| crate::transport::webrtc::IceServer {
            urls: s.urls.clone(),
            username: s.username.clone().unwrap_or_default(),
            credential: s.credential.clone().unwrap_or_default(),
        })
        .collect()
}

/// `base` (the user's settings) plus the ICE servers the signaling server handed out.
fn with_ice(base: &RtcConfig, servers: &[IceServer]) -> RtcConfig {
    let mut cfg = base.clone();
    cfg.ice_servers.extend(rtc_ice(servers));
    cfg
}

fn space_of(secret: &Secret) -> Result<SpaceName> {
    SpaceName::try_from(crate::crypto::rendezvous_space(secret)).map_err(signal_err)
}

/// Sender: joins the transfer's rendezvous space on `url`, where its receiver finds it
/// (right after the code, and again after either side restarts).
pub async fn open_rendezvous(url: &str, device_name: &str, secret: &Secret) -> Result<SignalLink> {
    SignalLink::connect(url, device_name, Some(space_of(secret)?)).await
}

/// Sender: serves its rendezvous until `cancel`: each receiver that reaches it must pass
/// the resume handshake, then negotiates data paths (`paths::serve`), whose connections go
/// to `incoming`. The signaling client reconnects by itself after a server restart.
pub async fn serve_rendezvous(
    link: SignalLink,
    secret: Secret,
    tcp: Vec<String>,
    rtc: RtcConfig,
    incoming: mpsc::Sender<Conn>,
    cancel: CancellationToken,
) -> Result<()> {
    serve_peers(
        link,
        "rendezvous",
        cancel,
        |_| {},
        move |conn, ice| {
            let (tcp, rtc, incoming) = (tcp.clone(), with_ice(&rtc, ice), incoming.clone());
            async move { answer_at_rendezvous(conn, &secret, tcp, rtc, incoming).await }
        },
    )
    .await
}

/// Serves every peer that sends `link` a blob until `cancel`: the first blob from a peer
/// starts `handle` on a relayed connection to it (at most [`MAX_RENDEZVOUS_PEERS`] at
/// once, each on the owned `JoinSet`), later blobs are routed to that connection, and the
/// peer leaving ends it. `handle` also gets the server's current ICE servers.
async fn serve_peers<F, Fut>(
    mut link: SignalLink,
    what: &'static str,
    cancel: CancellationToken,
    on_event: impl Fn(&SignalEvent),
    mut handle: F,
) -> Result<()>
where
    F: FnMut(Conn, &[IceServer]) -> Fut,
    Fut: Future<Output = Result<()>> + Send + 'static,
{
    let mut inboxes: HashMap<PeerId, mpsc::Sender<SealedBlob>> = HashMap::new();
    let mut handlers: JoinSet<PeerId> = JoinSet::new();
    let mut ice = link.ice_servers.clone();
    let result = loop {
        tokio::select! {
            biased;
            () = cancel.cancelled() => break Ok(()),
            Some(done) = handlers.join_next() => {
                if let Ok(peer) = done {
                    inboxes.remove(&peer);
                }
            }
            ev = link.events.recv() => {
                if let Some(ev) = &ev {
                    on_event(ev);
                }
                match ev {
                Some(SignalEvent::Message { from, blob }) => {
                    if let Some(inbox) = inboxes.get(&from) {
                        // A peer that does not read its queue loses blobs, not our time.
                        let _ = inbox.try_send(blob);
                        continue;
                    }
                    if inboxes.len() >= MAX_RENDEZVOUS_PEERS {
                        continue;
                    }
                    let (tx, rx) = mpsc::channel(32);
                    let _ = tx.try_send(blob);
                    inboxes.insert(from.clone(), tx);
                    let work = handle(relay::conn(link.client.clone(), from.clone(), rx), &ice);
                    handlers.spawn(async move {
                        if let Err(e) = work.await {
                            tracing::info!("{what}: peer {}: {e}", from.as_str());
                        }
                        from
                    });
                }
                Some(SignalEvent::PeerLeft { peer_id }) => {
                    // Dropping its inbox ends that peer's relayed stream.
                    inboxes.remove(&peer_id);
                }
                Some(SignalEvent::Connected { ice_servers, .. })
                | Some(SignalEvent::IceServers { ice_servers, .. }) => ice = ice_servers,
                Some(SignalEvent::Disconnected { reason, .. }) => {
                    tracing::info!("{what}: lost the signaling server ({reason}); reconnecting");
                    inboxes.clear();
                }
                Some(SignalEvent::Stopped { reason }) => {
                    break Err(signal_err(format!("the signaling client stopped: {reason}")))
                }
                Some(_) => {}
                None => break Err(signal_err("the signaling client stopped")),
                }
            }
        }
    };
    handlers.shutdown().await;
    link.shutdown().await;
    result
}

async fn answer_at_rendezvous(
    mut conn: Conn,
    secret: &Secret,
    tcp: Vec<String>,
    rtc: RtcConfig,
    incoming: mpsc::Sender<Conn>,
) -> Result<()> {
    let DialHello::Resume {
        rendezvous, nonce, ..
    } = session::read_hello(&mut conn).await?
    else {
        session::refuse(&mut conn, "unknown_transfer", "resume only at a rendezvous").await;
        return Err(Error::protocol("a code at the rendezvous"));
    };
    let expected = crate::crypto::rendezvous(secret);
    if skiff_proto::handshake::hex_field::<32>(&rendezvous).ok() != Some(expected) {
        session::refuse(&mut conn, "unknown_transfer", "no such transfer here").await;
        return Err(Error::protocol("a stranger at the rendezvous"));
    }
    let sig = session::accept_resume(conn, secret, &nonce).await?;
    paths::serve(sig, tcp, rtc, incoming).await
}

/// Receiver: meets the sender at the transfer's rendezvous space on `url` (waiting up to
/// `wait` for it to appear), authenticates with the resume secret, and negotiates a data
/// channel (`paths::dial`).
pub async fn dial_rendezvous(
    url: &str,
    device_name: &str,
    secret: &Secret,
    rtc: &RtcConfig,
    skip_tcp: bool,
    wait: Duration,
) -> Result<Channel> {
    let mut link = SignalLink::connect(url, device_name, Some(space_of(secret)?)).await?;
    let rtc = with_ice(rtc, &link.ice_servers);
    let result = async {
        let deadline = tokio::time::Instant::now() + wait;
        let mut candidates: Vec<PeerId> = Vec::new();
        let mut last = Error::Timeout {
            what: "waiting for the sender at the rendezvous (is it running?)",
        };
        loop {
            if let Some(peer) = candidates.pop() {
                let (inbox_tx, inbox) = mpsc::channel(32);
                let conn = relay::conn(link.client.clone(), peer.clone(), inbox);
                let work = async {
                    let mut sig = session::dial_resume(conn, secret).await?;
                    let data = paths::dial(&mut sig, secret, &rtc, skip_tcp).await;
                    sig.tx.close().await;
                    data
                };
                match link.routed(&peer, None, &inbox_tx, work).await {
                    Ok(ch) => return Ok(ch),
                    Err(e) => {
                        tracing::info!("rendezvous with {}: {e}", peer.as_str());
                        if matches!(e, Error::PeerVerification { .. } | Error::Decrypt) {
                            return Err(e);
                        }
                        last = e;
                        continue;
                    }
                }
            }
            let ev = tokio::time::timeout_at(deadline, link.events.recv())
                .await
                .map_err(|_| std::mem::replace(&mut last, Error::ConnectionClosed))?;
            match ev {
                Some(SignalEvent::Peers { list }) => {
                    candidates.extend(list.into_iter().map(|p| p.peer_id))
                }
                Some(SignalEvent::PeerJoined { peer }) => candidates.push(peer.peer_id),
                Some(SignalEvent::Stopped { reason }) => {
                    return Err(signal_err(format!(
                        "the signaling client stopped: {reason}"
                    )))
                }
                Some(_) => {}
                None => return Err(signal_err("the signaling client stopped")),
            }
        }
    }
    .await;
    link.shutdown().await;
    result
}

/// Sender, peer-list send: proves this device to `peer` and learns its key (Noise XX over
/// the relay), hands the session to `keep` (which stores the secret and opens the
/// rendezvous), then offers `tcp` on the sealed channel the receiver opens with it.
pub async fn device_offer<F: Future<Output = Result<()>>>(
    link: &mut SignalLink,
    peer: &PeerId,
    key: &DeviceKey,
    name: &str,
    tcp: Vec<String>,
    keep: impl FnOnce(DeviceSession) -> F,
) -> Result<()> {
    let (inbox_tx, inbox) = mpsc::channel(16);
    let conn = relay::conn(link.client.clone(), peer.clone(), inbox);
    let work = async {
        let mut conn = conn;
        let session = device::initiate(&mut conn, key, name).await?;
        let secret = session.secret;
        keep(session).await?;
        let DialHello::Resume {
            rendezvous, nonce, ..
        } = session::read_hello(&mut conn).await?
        else {
            return Err(Error::protocol("the receiving device did not resume"));
        };
        if skiff_proto::handshake::hex_field::<32>(&rendezvous).ok()
            != Some(crate::crypto::rendezvous(&secret))
        {
            return Err(Error::PeerVerification {
                reason: "the receiving device does not hold the session key".into(),
            });
        }
        let mut ch = session::accept_resume(conn, &secret, &nonce).await?;
        ch.tx
            .send_control(&SenderSignal::Paths { tcp }.encode())
            .await
    };
    link.routed(peer, None, &inbox_tx, work).await
}

/// An incoming peer-list send, authenticated, with the sender's direct addresses.
#[derive(Debug)]
pub struct DeviceRequest {
    pub device: device::PeerDevice,
    pub secret: Secret,
    pub tcp: Vec<String>,
}

/// Decides whether a device may proceed (say, refuses a key that differs from the one
/// pinned for its name); `Ok(trusted)` to go on.
pub type DeviceCheck = std::sync::Arc<
    dyn Fn(device::PeerDevice) -> std::pin::Pin<Box<dyn Future<Output = Result<bool>> + Send>>
        + Send
        + Sync,
>;

/// Listener (`skiff listen`): answers devices that contact this one in its space until
/// `cancel`; each one that passes the handshake and `check` becomes a [`DeviceRequest`].
pub async fn serve_listen(
    link: SignalLink,
    key: DeviceKey,
    name: String,
    check: DeviceCheck,
    requests: mpsc::Sender<(DeviceRequest, bool)>,
    presence: tokio::sync::watch::Sender<crate::node::PeerList>,
    cancel: CancellationToken,
) -> Result<()> {
    let me = key.id();
    let on_event = move |ev: &SignalEvent| {
        presence.send_if_modified(|list| list.apply(&me, ev));
    };
    serve_peers(link, "listen", cancel, on_event, move |conn, _ice| {
        let (key, name, check, requests) =
            (key.clone(), name.clone(), check.clone(), requests.clone());
        async move {
            let r = answer_device(conn, &key, &name, &check).await?;
            let _ = requests.send(r).await;
            Ok(())
        }
    })
    .await
}

async fn answer_device(
    mut conn: Conn,
    key: &DeviceKey,
    name: &str,
    check: &DeviceCheck,
) -> Result<(DeviceRequest, bool)> {
    let first = device::first_message(&mut conn).await?;
    let session = device::respond(&mut conn, key, name, &first).await?;
    let trusted = check(session.peer.clone()).await?;
    let mut ch = session::dial_resume(conn, &session.secret).await?;
    let tcp = paths::read_paths(&mut ch).await?;
    Ok((
        DeviceRequest {
            device: session.peer,
            secret: session.secret,
            tcp,
        },
        trusted,
    ))
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
