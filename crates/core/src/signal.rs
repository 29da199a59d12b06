//! Signaling client: one long-lived WebSocket to `skiff-signal`, with reconnects.
//!
//! Owns: hello and version check, presence and nameplate events, request/reply matching
//! (the server answers in order), relaying opaque blobs, jittered exponential backoff
//! (1 s → 30 s) that restores presence after every reconnect, and [`probe`].
//! Must not: look inside blobs (sealing is the session's job), log them, or keep a task
//! alive after [`SignalClient::shutdown`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use skiff_proto::signal::{
    close, ClientMsg, DeviceId, ErrorCode, IceServer, Nameplate, PeerId, PeerInfo, SealedBlob,
    ServerMsg, SpaceName, SIGNAL_VERSION,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::{Error, Result};

/// Time allowed for TCP, TLS, the upgrade and `welcome`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the client pings; the server closes sockets silent for 60 s.
pub const PING_INTERVAL: Duration = Duration::from_secs(20);
/// No frame from the server for this long means the connection is dead.
pub const SERVER_SILENCE: Duration = Duration::from_secs(60);
/// Largest server message accepted (a relayed 64 KiB message plus its envelope).
const MAX_SERVER_MESSAGE: usize = 128 * 1024;

fn signal_err(reason: impl Into<String>) -> Error {
    Error::Signal {
        reason: reason.into(),
    }
}

/// Jittered exponential backoff: attempt n waits a random time in `[d/2, d]` where
/// `d = min(min · 2ⁿ, max)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub min: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            min: Duration::from_secs(1),
            max: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The ceiling of attempt `n` (0-based), before jitter.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        self.min.saturating_mul(factor).min(self.max)
    }

    /// The delay before attempt `n`, jittered so that clients of a restarted server spread out.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(attempt);
        let half = ceiling / 2;
        half + ceiling.saturating_sub(half).mul_f64(rng.gen::<f64>())
    }
}

/// Who this client is and where the server is.
#[derive(Debug, Clone)]
pub struct SignalOptions {
    /// `ws://host:port/ws` or `wss://host/ws`.
    pub url: String,
    pub device_id: DeviceId,
    /// Display name shown to peers in the same space.
    pub name: String,
    /// A named space; `None` groups peers by public address.
    pub space: Option<SpaceName>,
    pub backoff: Backoff,
}

/// What happens on the signaling connection, in order.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum SignalEvent {
    /// (Re)connected: a new peer id, and presence is announced again.
    Connected {
        peer_id: PeerId,
        version: u16,
        ice_servers: Vec<IceServer>,
        ice_ttl_secs: u64,
    },
    /// Everyone else in the space, right after each `Connected`.
    Peers {
        list: Vec<PeerInfo>,
    },
    PeerJoined {
        peer: PeerInfo,
    },
    PeerLeft {
        peer_id: PeerId,
    },
    NameplateJoined {
        nameplate: Nameplate,
        peer: PeerId,
    },
    NameplateLeft {
        nameplate: Nameplate,
        peer: PeerId,
    },
    NameplateExpired {
        nameplate: Nameplate,
    },
    Message {
        from: PeerId,
        blob: SealedBlob,
    },
    /// Fresh TURN credentials, fetched by the client itself at 80 % of the previous TTL.
    IceServers {
        ice_servers: Vec<IceServer>,
        ice_ttl_secs: u64,
    },
    /// An error not tied to a request (e.g. `unknown_peer` after a `send`).
    ServerError {
        code: ErrorCode,
        message: String,
    },
    /// The connection is gone; nameplates held on it are gone too. Retrying after `retry_in`.
    Disconnected {
        reason: String,
        retry_in: Duration,
    },
    /// The client gave up for good (shut down, replaced by another session of this
    /// device, or no protocol version in common).
    Stopped {
        reason: String,
    },
}

#[derive(Debug)]
enum Request {
    Allocate,
    Claim(Nameplate),
    Release(Nameplate),
    RefreshIce,
    Ping,
}

#[derive(Debug)]
enum Reply {
    Allocated(Nameplate),
    Claimed(PeerId),
    Released,
    Ice(Vec<IceServer>, u64),
    Pong(Duration),
}

enum Command {
    Request {
        request: Request,
        reply: oneshot::Sender<Result<Reply>>,
    },
    Send {
        to: PeerId,
        blob: SealedBlob,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// Handle to the signaling actor. Cloning shares the connection.
#[derive(Clone, Debug)]
pub struct SignalClient {
    cmds: mpsc::Sender<Command>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

impl SignalClient {
    /// Starts connecting in the background; events arrive on the returned receiver.
    pub fn spawn(options: SignalOptions) -> (Self, mpsc::Receiver<SignalEvent>) {
        let (cmds, inbox) = mpsc::channel(64);
        let (events, rx) = mpsc::channel(256);
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let actor = Actor {
            options,
            inbox,
            events,
            cancel: cancel.clone(),
        };
        tasks.spawn(actor.run());
        (
            Self {
                cmds,
                cancel,
                tasks,
            },
            rx,
        )
    }

    async fn request(&self, request: Request) -> Result<Reply> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Command::Request { request, reply })
            .await
            .map_err(|_| signal_err("the signaling client has stopped"))?;
        rx.await
            .map_err(|_| signal_err("the signaling client has stopped"))?
    }

    /// A fresh nameplate from the server.
    pub async fn allocate(&self) -> Result<Nameplate> {
        match self.request(Request::Allocate).await? {
            Reply::Allocated(n) => Ok(n),
            other => Err(signal_err(format!("unexpected reply {other:?}"))),
        }
    }

    /// Joins a nameplate; returns the peer that allocated it.
    pub async fn claim(&self, nameplate: Nameplate) -> Result<PeerId> {
        match self.request(Request::Claim(nameplate)).await? {
            Reply::Claimed(p) => Ok(p),
            other => Err(signal_err(format!("unexpected reply {other:?}"))),
        }
    }

    pub async fn release(&self, nameplate: Nameplate) -> Result<()> {
        match self.request(Request::Release(nameplate)).await? {
            Reply::Released => Ok(()),
            other => Err(signal_err(format!("unexpected reply {other:?}"))),
        }
    }

    /// Fresh TURN credentials (call at 80 % of `ice_ttl_secs`).
    pub async fn refresh_ice(&self) -> Result<(Vec<IceServer>, u64)> {
        match self.request(Request::RefreshIce).await? {
            Reply::Ice(servers, ttl) => Ok((servers, ttl)),
            other => Err(signal_err(format!("unexpected reply {other:?}"))),
        }
    }

    /// Round trip time of an application-level ping.
    pub async fn ping(&self) -> Result<Duration> {
        match self.request(Request::Ping).await? {
            Reply::Pong(rtt) => Ok(rtt),
            other => Err(signal_err(format!("unexpected reply {other:?}"))),
        }
    }

    /// Queues a blob for a peer. A refusal (`unknown_peer`) arrives as an event.
    pub async fn send(&self, to: PeerId, blob: SealedBlob) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(Command::Send { to, blob, reply })
            .await
            .map_err(|_| signal_err("the signaling client has stopped"))?;
        rx.await
            .map_err(|_| signal_err("the signaling client has stopped"))?
    }

    /// Closes the connection and waits until the background task has ended.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Welcome {
    peer_id: PeerId,
    version: u16,
    ice_servers: Vec<IceServer>,
    ice_ttl_secs: u64,
    peers: Vec<PeerInfo>,
}

/// Why a connection attempt or session ended.
enum Ended {
    /// Retry with backoff.
    Lost(String),
    /// Do not retry.
    Stop(String),
}

fn tls_connector() -> Connector {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    match rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
    {
        Ok(builder) => Connector::Rustls(Arc::new(
            builder.with_root_certificates(roots).with_no_client_auth(),
        )),
        // The ring provider supports the default versions; plain is only for ws:// then.
        Err(_) => Connector::Plain,
    }
}

/// TCP (+TLS), upgrade, hello, welcome and the first peers snapshot.
async fn connect(
    options: &SignalOptions,
    device_id: &DeviceId,
    space: Option<SpaceName>,
) -> Result<(Ws, Welcome), Ended> {
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_SERVER_MESSAGE))
        .max_frame_size(Some(MAX_SERVER_MESSAGE));
    let connector = options.url.starts_with("wss:").then(tls_connector);
    let (mut ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        options.url.as_str(),
        Some(config),
        true,
        connector,
    )
    .await
    .map_err(|e| Ended::Lost(format!("cannot connect to {}: {e}", options.url)))?;
    let hello = ClientMsg::Hello {
        version: SIGNAL_VERSION,
        device_id: device_id.clone(),
        name: options.name.clone(),
        space,
    };
    ws.send(Message::text(hello.encode()))
        .await
        .map_err(|e| Ended::Lost(e.to_string()))?;
    let first = next_server_msg(&mut ws).await?;
    let (peer_id, version, ice_servers, ice_ttl_secs) = match first {
        ServerMsg::Welcome {
            peer_id,
            version,
            ice_servers,
            ice_ttl_secs,
        } => (peer_id, version, ice_servers, ice_ttl_secs),
        ServerMsg::Error {
            code: ErrorCode::UnsupportedVersion,
            message,
        } => {
            return Err(Ended::Stop(format!(
                "the server speaks another protocol version: {message}"
            )))
        }
        ServerMsg::Error { code, message } => {
            return Err(Ended::Lost(format!("{}: {message}", code.as_str())))
        }
        other => return Err(Ended::Lost(format!("expected welcome, got {other:?}"))),
    };
    let peers = match next_server_msg(&mut ws).await? {
        ServerMsg::Peers { list } => list,
        other => return Err(Ended::Lost(format!("expected peers, got {other:?}"))),
    };
    Ok((
        ws,
        Welcome {
            peer_id,
            version,
            ice_servers,
            ice_ttl_secs,
            peers,
        },
    ))
}

/// The next protocol message; pings and unknown news are skipped.
async fn next_server_msg(ws: &mut Ws) -> Result<ServerMsg, Ended> {
    loop {
        match ws.next().await {
            None => return Err(Ended::Lost("the server closed the connection".into())),
            Some(Err(e)) => return Err(Ended::Lost(e.to_string())),
            Some(Ok(Message::Text(t))) => match ServerMsg::decode(t.as_str()) {
                Ok(ServerMsg::Unknown) => continue,
                Ok(msg) => return Ok(msg),
                Err(e) => return Err(Ended::Lost(format!("bad message from the server: {e}"))),
            },
            Some(Ok(Message::Close(frame))) => return Err(closed(frame)),
            Some(Ok(_)) => continue,
        }
    }
}

fn closed(frame: Option<tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> Ended {
    let (code, reason) = frame.map_or((0, String::new()), |f| {
        (u16::from(f.code), f.reason.to_string())
    });
    if code == close::POLICY && reason.contains("replaced") {
        return Ended::Stop(format!(
            "another session of this device took over ({reason})"
        ));
    }
    if code == close::RESTART {
        return Ended::Lost("the server is restarting".into());
    }
    Ended::Lost(format!(
        "the server closed the connection ({code} {reason})"
    ))
}

struct Actor {
    options: SignalOptions,
    inbox: mpsc::Receiver<Command>,
    events: mpsc::Sender<SignalEvent>,
    cancel: CancellationToken,
}

struct Pending {
    request: Request,
    /// `None` for the client's own credential refresh: its answer becomes an event.
    reply: Option<oneshot::Sender<Result<Reply>>>,
    sent: Instant,
}

/// When to fetch fresh TURN credentials: at 80 % of their lifetime.
fn refresh_at(ttl_secs: u64) -> Option<Instant> {
    (ttl_secs > 0).then(|| Instant::now() + Duration::from_secs(ttl_secs).mul_f64(0.8))
}

async fn sleep_until_some(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn emit(&self, event: SignalEvent) -> bool {
        tokio::select! {
            biased;
            () = self.cancel.cancelled() => false,
            r = self.events.send(event) => r.is_ok(),
        }
    }

    async fn run(mut self) {
        let mut attempt: u32 = 0;
        let device_id = self.options.device_id.clone();
        let space = self.options.space.clone();
        let stop_reason = loop {
            let connected = tokio::select! {
                biased;
                () = self.cancel.cancelled() => break "shut down".to_owned(),
                r = timeout(CONNECT_TIMEOUT, connect(&self.options, &device_id, space.clone())) => r,
            };
            let reason = match connected {
                Err(_) => "timed out connecting".to_owned(),
                Ok(Err(Ended::Stop(reason))) => break reason,
                Ok(Err(Ended::Lost(reason))) => reason,
                Ok(Ok((ws, welcome))) => {
                    attempt = 0;
                    let Welcome {
                        peer_id,
                        version,
                        ice_servers,
                        ice_ttl_secs,
                        peers,
                    } = welcome;
                    tracing::debug!(peer = %peer_id, "signaling connected");
                    let ice_ttl = ice_ttl_secs;
                    if !self
                        .emit(SignalEvent::Connected {
                            peer_id,
                            version,
                            ice_servers,
                            ice_ttl_secs,
                        })
                        .await
                        || !self.emit(SignalEvent::Peers { list: peers }).await
                    {
                        break "shut down".to_owned();
                    }
                    match self.session(ws, ice_ttl).await {
                        Ended::Stop(reason) => break reason,
                        Ended::Lost(reason) => reason,
                    }
                }
            };
            let retry_in = self.options.backoff.delay(attempt, &mut rand::thread_rng());
            attempt = attempt.saturating_add(1);
            tracing::debug!(%reason, ?retry_in, "signaling disconnected");
            if !self
                .emit(SignalEvent::Disconnected { reason, retry_in })
                .await
            {
                break "shut down".to_owned();
            }
            if !self.wait(retry_in).await {
                break "shut down".to_owned();
            }
        };
        let _ = self.events.try_send(SignalEvent::Stopped {
            reason: stop_reason,
        });
    }

    /// Waits out the backoff, refusing requests meanwhile. False on shutdown.
    async fn wait(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => return false,
                () = tokio::time::sleep_until(until) => return true,
                cmd = self.inbox.recv() => match cmd {
                    None => return false,
                    Some(cmd) => refuse(cmd, "not connected to the signaling server"),
                },
            }
        }
    }

    async fn session(&mut self, mut ws: Ws, ice_ttl_secs: u64) -> Ended {
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut ice_due = refresh_at(ice_ttl_secs);
        let mut ping = tokio::time::interval_at(Instant::now() + PING_INTERVAL, PING_INTERVAL);
        let mut last_heard = Instant::now();
        let mut next_ping_id: u64 = 1;
        let end = loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => {
                    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
                    break Ended::Stop("shut down".into());
                }
                frame = ws.next() => {
                    last_heard = Instant::now();
                    let msg = match frame {
                        None => break Ended::Lost("the server closed the connection".into()),
                        Some(Err(e)) => break Ended::Lost(e.to_string()),
                        Some(Ok(Message::Close(frame))) => break closed(frame),
                        Some(Ok(Message::Text(t))) => match ServerMsg::decode(t.as_str()) {
                            Ok(msg) => msg,
                            Err(e) => break Ended::Lost(format!("bad message from the server: {e}")),
                        },
                        Some(Ok(_)) => continue,
                    };
                    if let Some(event) = self.dispatch(msg, &mut pending, &mut ice_due) {
                        if !self.emit(event).await {
                            break Ended::Stop("shut down".into());
                        }
                    }
                }
                cmd = self.inbox.recv() => {
                    let Some(cmd) = cmd else { break Ended::Stop("every handle was dropped".into()) };
                    let (text, result) = match cmd {
                        Command::Send { to, blob, reply } => (ClientMsg::Send { to, blob }.encode(), Err(reply)),
                        Command::Request { request, reply } => {
                            let msg = match &request {
                                Request::Allocate => ClientMsg::Allocate,
                                Request::Claim(n) => ClientMsg::Claim { nameplate: n.clone() },
                                Request::Release(n) => ClientMsg::Release { nameplate: n.clone() },
                                Request::RefreshIce => ClientMsg::RefreshIce,
                                Request::Ping => {
                                    next_ping_id += 1;
                                    ClientMsg::Ping { id: next_ping_id }
                                }
                            };
                            (msg.encode(), Ok(Pending { request, reply: Some(reply), sent: Instant::now() }))
                        }
                    };
                    if let Err(e) = ws.send(Message::text(text)).await {
                        let reason = e.to_string();
                        match result {
                            Ok(p) => { if let Some(r) = p.reply { let _ = r.send(Err(signal_err(reason.clone()))); } }
                            Err(reply) => { let _ = reply.send(Err(signal_err(reason.clone()))); }
                        }
                        break Ended::Lost(reason);
                    }
                    match result {
                        Ok(p) => pending.push_back(p),
                        Err(reply) => { let _ = reply.send(Ok(())); }
                    }
                }
                () = sleep_until_some(ice_due) => {
                    ice_due = None;
                    if ws.send(Message::text(ClientMsg::RefreshIce.encode())).await.is_err() {
                        break Ended::Lost("cannot reach the server".into());
                    }
                    pending.push_back(Pending { request: Request::RefreshIce, reply: None, sent: Instant::now() });
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() >= SERVER_SILENCE {
                        break Ended::Lost("the server stopped answering".into());
                    }
                    if ws.send(Message::Ping(Default::default())).await.is_err() {
                        break Ended::Lost("cannot reach the server".into());
                    }
                }
            }
        };
        let reason = match &end {
            Ended::Lost(r) | Ended::Stop(r) => r.clone(),
        };
        for p in pending {
            if let Some(reply) = p.reply {
                let _ = reply.send(Err(signal_err(format!("connection lost: {reason}"))));
            }
        }
        end
    }

    /// Matches replies to the oldest pending request (the server answers in order);
    /// everything else becomes an event.
    fn dispatch(
        &self,
        msg: ServerMsg,
        pending: &mut VecDeque<Pending>,
        ice_due: &mut Option<Instant>,
    ) -> Option<SignalEvent> {
        let answer = |pending: &mut VecDeque<Pending>, reply: Result<Reply>| {
            if let Some(Pending {
                reply: Some(to), ..
            }) = pending.pop_front()
            {
                let _ = to.send(reply);
            }
        };
        let front = pending.front().map(|p| &p.request);
        match msg {
            ServerMsg::Allocated { nameplate } if matches!(front, Some(Request::Allocate)) => {
                answer(pending, Ok(Reply::Allocated(nameplate)));
            }
            ServerMsg::Claimed { peer, .. } if matches!(front, Some(Request::Claim(_))) => {
                answer(pending, Ok(Reply::Claimed(peer)));
            }
            ServerMsg::Released { .. } if matches!(front, Some(Request::Release(_))) => {
                answer(pending, Ok(Reply::Released));
            }
            ServerMsg::IceServers {
                ice_servers,
                ice_ttl_secs,
            } if matches!(front, Some(Request::RefreshIce)) => {
                *ice_due = refresh_at(ice_ttl_secs);
                if pending.front().is_some_and(|p| p.reply.is_none()) {
                    pending.pop_front();
                    return Some(SignalEvent::IceServers {
                        ice_servers,
                        ice_ttl_secs,
                    });
                }
                answer(pending, Ok(Reply::Ice(ice_servers, ice_ttl_secs)));
            }
            ServerMsg::Pong { .. } if matches!(front, Some(Request::Ping)) => {
                let rtt = pending
                    .front()
                    .map(|p| p.sent.elapsed())
                    .unwrap_or_default();
                answer(pending, Ok(Reply::Pong(rtt)));
            }
            ServerMsg::Error { code, message } => {
                let for_request = matches!(
                    (front, code),
                    (Some(Request::Allocate), ErrorCode::TooManyNameplates)
                        | (
                            Some(Request::Claim(_)),
                            ErrorCode::NameplateUnavailable
                                | ErrorCode::TooManyAttempts
                                | ErrorCode::TooManyNameplates,
                        )
                        | (Some(Request::Release(_)), ErrorCode::NotInNameplate)
                        | (
                            Some(Request::RefreshIce),
                            ErrorCode::NoTurn | ErrorCode::RateLimited
                        )
                );
                if !for_request {
                    return Some(SignalEvent::ServerError { code, message });
                }
                answer(
                    pending,
                    Err(signal_err(format!("{}: {message}", code.as_str()))),
                );
            }
            ServerMsg::PeerJoined { peer } => return Some(SignalEvent::PeerJoined { peer }),
            ServerMsg::PeerLeft { peer_id } => return Some(SignalEvent::PeerLeft { peer_id }),
            ServerMsg::Peers { list } => return Some(SignalEvent::Peers { list }),
            ServerMsg::NameplateJoined { nameplate, peer } => {
                return Some(SignalEvent::NameplateJoined { nameplate, peer })
            }
            ServerMsg::NameplateLeft { nameplate, peer } => {
                return Some(SignalEvent::NameplateLeft { nameplate, peer })
            }
            ServerMsg::NameplateExpired { nameplate } => {
                return Some(SignalEvent::NameplateExpired { nameplate })
            }
            ServerMsg::Message { from, blob } => return Some(SignalEvent::Message { from, blob }),
            other => tracing::debug!(msg = ?other, "unexpected signaling message ignored"),
        }
        None
    }
}

fn refuse(cmd: Command, why: &str) {
    match cmd {
        Command::Request { reply, .. } => {
            let _ = reply.send(Err(signal_err(why)));
        }
        Command::Send { reply, .. } => {
            let _ = reply.send(Err(signal_err(why)));
        }
    }
}

/// What "Test connection" shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ProbeReport {
    pub url: String,
    /// The negotiated protocol version.
    pub version: u16,
    /// Time to connect and receive `welcome`.
    pub connect_ms: u64,
    /// Round trip of one ping after connecting.
    pub latency_ms: f64,
    /// Whether the server handed out TURN credentials.
    pub turn: bool,
    pub ice_servers: Vec<String>,
}

/// A random device id and space, so a probe or a listing never displaces a real session.
fn throwaway_id(prefix: &str) -> Result<DeviceId> {
    let id = format!("{prefix}-{:016x}", rand::thread_rng().gen::<u64>());
    DeviceId::try_from(id).map_err(|reason| Error::InvalidInput { reason })
}

/// Connects once (no retries), measures, and disconnects. Joins a private random space,
/// so nobody sees the probe.
pub async fn probe(url: &str) -> Result<ProbeReport> {
    let device_id = throwaway_id("probe")?;
    let space = SpaceName::try_from(format!("probe-{:016x}", rand::thread_rng().gen::<u64>()))
        .map_err(|reason| Error::InvalidInput { reason })?;
    let options = SignalOptions {
        url: url.to_owned(),
        device_id: device_id.clone(),
        name: "probe".into(),
        space: Some(space.clone()),
        backoff: Backoff::default(),
    };
    let started = Instant::now();
    let (mut ws, welcome) =
        match timeout(CONNECT_TIMEOUT, connect(&options, &device_id, Some(space))).await {
            Err(_) => {
                return Err(Error::Timeout {
                    what: "connecting to the signaling server",
                })
            }
            Ok(Err(Ended::Lost(reason) | Ended::Stop(reason))) => return Err(signal_err(reason)),
            Ok(Ok(c)) => c,
        };
    let connect_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    let sent = Instant::now();
    ws.send(Message::text(ClientMsg::Ping { id: 1 }.encode()))
        .await
        .map_err(|e| signal_err(e.to_string()))?;
    let pong = timeout(CONNECT_TIMEOUT, async {
        loop {
            match next_server_msg(&mut ws).await {
                Ok(ServerMsg::Pong { id: 1 }) => return Ok(()),
                Ok(_) => continue,
                Err(Ended::Lost(r) | Ended::Stop(r)) => return Err(signal_err(r)),
            }
        }
    })
    .await;
    match pong {
        Err(_) => {
            return Err(Error::Timeout {
                what: "waiting for the signaling server's pong",
            })
        }
        Ok(r) => r?,
    }
    let latency_ms = sent.elapsed().as_secs_f64() * 1000.0;
    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    Ok(ProbeReport {
        url: url.to_owned(),
        version: welcome.version,
        connect_ms,
        latency_ms,
        turn: welcome
            .ice_servers
            .iter()
            .any(|s| s.username.is_some() && s.credential.is_some()),
        ice_servers: welcome
            .ice_servers
            .iter()
            .flat_map(|s| s.urls.iter().cloned())
            .collect(),
    })
}

/// The peers in this machine's space (or a named one), from one short connection.
pub async fn list_peers(url: &str, name: &str, space: Option<SpaceName>) -> Result<Vec<PeerInfo>> {
    let device_id = throwaway_id("cli")?;
    let options = SignalOptions {
        url: url.to_owned(),
        device_id: device_id.clone(),
        name: name.to_owned(),
        space: space.clone(),
        backoff: Backoff::default(),
    };
    let (mut ws, welcome) =
        match timeout(CONNECT_TIMEOUT, connect(&options, &device_id, space)).await {
            Err(_) => {
                return Err(Error::Timeout {
                    what: "connecting to the signaling server",
                })
            }
            Ok(Err(Ended::Lost(reason) | Ended::Stop(reason))) => return Err(signal_err(reason)),
            Ok(Ok(c)) => c,
        };
    let _ = timeout(Duration::from_secs(1), ws.close(None)).await;
    Ok(welcome.peers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_thirty_with_jitter() {
        let b = Backoff::default();
        let ceilings: Vec<u64> = (0..8).map(|n| b.ceiling(n).as_secs()).collect();
        assert_eq!(ceilings, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
        let mut rng = rand::thread_rng();
        let mut distinct = std::collections::HashSet::new();
        for n in 0..10 {
            for _ in 0..50 {
                let d = b.delay(n, &mut rng);
                assert!(d >= b.ceiling(n) / 2 && d <= b.ceiling(n), "{n}: {d:?}");
                distinct.insert(d);
            }
        }
        assert!(distinct.len() > 100, "jittered, not fixed");
    }

    #[test]
    fn closing_reasons_decide_whether_to_retry() {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        let frame = |code: u16, reason: &str| {
            Some(CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            })
        };
        assert!(matches!(
            closed(frame(close::RESTART, "server restarting")),
            Ended::Lost(_)
        ));
        assert!(matches!(
            closed(frame(close::POLICY, "idle timeout")),
            Ended::Lost(_)
        ));
        assert!(matches!(
            closed(frame(close::POLICY, "replaced by a newer connection")),
            Ended::Stop(_)
        ));
        assert!(matches!(closed(None), Ended::Lost(_)));
    }
}
