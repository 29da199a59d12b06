//! WebRTC transport: frames over one reliable, ordered data channel (webrtc 0.21.1).
//!
//! Owns: the peer connection and everything it spawns (driver, polling task, supervisor,
//! all on one [`TaskTracker`] and shut down when the [`Conn`] is dropped), the split of
//! frames into 64 KiB messages and their bounded reassembly, the socket and SCTP settings
//! of the performance guide §4.3, and reading back what the DTLS and ICE layers actually
//! used: both certificate fingerprints and the selected candidate pair.
//! Must not: carry signaling itself or trust it — SDP and candidates go out and come in
//! through the caller's channels, which the engine seals with the PAKE key — nor buffer
//! more than one frame of `max` bytes per direction, nor leave a task running after the
//! connection is gone.
//!
//! Wire format inside the channel: see [`framing`]. Closing: [`FrameSink::close`] sends a
//! `FIN` message and waits until SCTP has had every byte acknowledged; the peer's
//! [`FrameStream::recv`] then returns `Ok(None)`. A channel that ends without `FIN` is
//! [`Error::ConnectionClosed`].

mod framing;
mod runtime;

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::BytesMut;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use webrtc::data_channel::{DataChannel, DataChannelEvent, RTCDataChannelInit};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCCertificate,
    RTCConfigurationBuilder, RTCIceCandidate, RTCIceCandidateInit, RTCIceCandidateType,
    RTCIceGatheringState, RTCIceServer, RTCIceTransportPolicy, RTCPeerConnectionIceEvent,
    RTCPeerConnectionState, RTCSessionDescription, SettingEngineBuilder,
};

use super::{Conn, FrameSink, FrameStream, PathKind};
use crate::{Error, Result};

pub use framing::MESSAGE_SIZE;

/// Sockets' `SO_RCVBUF`/`SO_SNDBUF` request (performance guide §4.3 item 1).
pub const UDP_BUFFER: usize = 4 << 20;
/// Bytes a sender may have handed to SCTP and not yet had acknowledged (§4.3 item 3).
pub const SEND_BUFFER_LIMIT: usize = 4 << 20;

/// Data-channel messages queued between the polling task and [`FrameStream::recv`]:
/// 16 × 64 KiB = 1 MiB (webrtc holds up to 256 more); beyond that the polling task waits, the driver holds
/// delivery, and the SCTP window closes on the sender.
const INBOUND_QUEUE: usize = 16;
/// Peer-connection events (candidates, states) queued for the negotiation loop.
const EVENT_QUEUE: usize = 128;
/// Remote candidates accepted before the remote description arrives.
const MAX_EARLY_CANDIDATES: usize = 64;
/// How long `close` waits for SCTP to acknowledge everything sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(20);
const FLUSH_POLL: Duration = Duration::from_millis(5);
/// After our `FIN`, how long teardown waits for the peer to close first, so that a peer
/// that is slow to read still gets everything.
const LINGER: Duration = Duration::from_secs(2);
/// How long ICE holds a working relayed pair back in favour of a direct one.
const RELAY_ACCEPTANCE_WAIT: Duration = Duration::from_millis(750);
/// How often `READY` is repeated until the peer's arrives.
const READY_INTERVAL: Duration = Duration::from_millis(50);
/// Bound on `PeerConnection::close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// The one channel: negotiated out of band (no DCEP round trip), id 0, reliable, ordered.
const CHANNEL_ID: u16 = 0;
const CHANNEL_LABEL: &str = "skiff";

/// Which side creates the offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RtcRole {
    Offerer,
    Answerer,
}

/// One signaling message. The caller carries these to the peer, sealed, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RtcSignal {
    /// SDP offer (carries `a=fingerprint`).
    Offer(String),
    /// SDP answer.
    Answer(String),
    /// A trickled ICE candidate: `RTCIceCandidateInit` as JSON
    /// (`{"candidate":"candidate:…","sdpMid":…,"sdpMLineIndex":…}`).
    Candidate(String),
    /// No more local candidates.
    EndOfCandidates,
}

/// A STUN or TURN server.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct IceServer {
    /// `stun:host:port`, `turn:host:port?transport=udp`, …
    pub urls: Vec<String>,
    pub username: String,
    pub credential: String,
}

impl fmt::Debug for IceServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IceServer")
            .field("urls", &self.urls)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// Connection settings. mDNS is always off: host candidates carry real addresses, which
/// is fine because the engine seals every candidate.
#[derive(Debug, Clone)]
pub struct RtcConfig {
    pub ice_servers: Vec<IceServer>,
    /// Local UDP addresses to bind. Empty: `0.0.0.0:0`, one socket per non-loopback
    /// interface. A concrete address binds exactly that (tests use `127.0.0.1:0`).
    pub bind: Vec<SocketAddr>,
    /// Gather relay candidates only (forces TURN; for labs and tests).
    pub relay_only: bool,
    /// `SO_RCVBUF`/`SO_SNDBUF` to request on every ICE socket; 0 leaves the default.
    pub udp_buffer: usize,
    /// Per-channel send buffer bound; `FrameSink::send` waits while it is full.
    pub send_buffer_limit: usize,
    /// SCTP receive window (default 1 MiB in `rtc`); raise for long fat WAN paths.
    pub sctp_receive_window: Option<u32>,
}

impl Default for RtcConfig {
    fn default() -> Self {
        Self {
            ice_servers: Vec::new(),
            bind: Vec::new(),
            relay_only: false,
            udp_buffer: UDP_BUFFER,
            send_buffer_limit: SEND_BUFFER_LIMIT,
            sctp_receive_window: None,
        }
    }
}

/// How a TURN client reaches its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayProtocol {
    Udp,
    Tcp,
    Tls,
    /// The peer's relay: its transport to its server is not visible to us.
    Unknown,
}

/// The type of one side of the selected candidate pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandidateKind {
    Host,
    ServerReflexive,
    PeerReflexive,
    Relay(RelayProtocol),
    Unknown,
}

/// The candidate pair ICE selected, as the ICE agent reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SelectedPair {
    pub local: CandidateKind,
    pub remote: CandidateKind,
    pub local_addr: String,
    pub remote_addr: String,
}

impl SelectedPair {
    /// The path label: relayed if either side is a relay candidate (our leg's transport
    /// when the relay is ours); `lan` for a host candidate talking to a private, loopback
    /// or link-local address; otherwise `direct` (server- or peer-reflexive, or public hosts).
    pub fn path(&self) -> PathKind {
        match (self.local, self.remote) {
            (CandidateKind::Relay(p), _) => match p {
                RelayProtocol::Tcp => PathKind::TurnTcp,
                RelayProtocol::Tls => PathKind::TurnTls,
                RelayProtocol::Udp | RelayProtocol::Unknown => PathKind::TurnUdp,
            },
            (_, CandidateKind::Relay(_)) => PathKind::TurnUdp,
            (CandidateKind::Host, _) if is_local_ip(&self.remote_addr) => PathKind::Lan,
            _ => PathKind::Direct,
        }
    }
}

/// A connected WebRTC session.
pub struct RtcConn {
    /// The frame transport the engine runs its handshake and sealed channel over.
    pub conn: Conn,
    pub role: RtcRole,
    /// SHA-256 of the DER certificate our DTLS stack presented.
    pub local_fingerprint: [u8; 32],
    /// SHA-256 of the DER certificate the peer presented in the DTLS handshake (read from
    /// the DTLS transport after the handshake, not from SDP).
    pub remote_fingerprint: [u8; 32],
    pub pair: SelectedPair,
    /// Smallest `SO_RCVBUF`/`SO_SNDBUF` the kernel granted on our ICE sockets, as
    /// `getsockopt` reports it (Linux: twice the usable size); 0 when unknown.
    pub udp_rcvbuf: usize,
    pub udp_sndbuf: usize,
    /// From the call to `connect` until the channel opened.
    pub setup_time: Duration,
    tasks: TaskTracker,
}

impl RtcConn {
    /// The tracker holding every task of this connection; `tasks().wait()` resolves once
    /// the connection has been dropped and fully shut down.
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// The offerer's and the answerer's fingerprints, in that order (for the fingerprint
    /// confirmation HMAC, security guide §2.1 item 6).
    pub fn fingerprints_by_role(&self) -> ([u8; 32], [u8; 32]) {
        match self.role {
            RtcRole::Offerer => (self.local_fingerprint, self.remote_fingerprint),
            RtcRole::Answerer => (self.remote_fingerprint, self.local_fingerprint),
        }
    }
}

impl fmt::Debug for RtcConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RtcConn")
            .field("role", &self.role)
            .field("path", &self.conn.path)
            .field("remote", &self.conn.remote)
            .field("local_fingerprint", &hex::encode(self.local_fingerprint))
            .field("remote_fingerprint", &hex::encode(self.remote_fingerprint))
            .field("pair", &self.pair)
            .finish_non_exhaustive()
    }
}

/// Connects to the peer: negotiates over `out`/`inp` (trickle ICE), waits until the data
/// channel is open, and returns the connection. Both channels are dropped on return;
/// signals arriving later are not needed. Fails with [`Error::Timeout`] after `timeout`.
pub async fn connect(
    role: RtcRole,
    cfg: &RtcConfig,
    out: mpsc::Sender<RtcSignal>,
    mut inp: mpsc::Receiver<RtcSignal>,
    timeout: Duration,
) -> Result<RtcConn> {
    let started = Instant::now();
    let tasks = TaskTracker::new();
    let cancel = CancellationToken::new();
    // From here on, any early return drops `owner`, which tears everything down.
    let owner = Owner {
        cancel: cancel.clone(),
    };
    let rt = Arc::new(runtime::ConnRuntime::new(tasks.clone(), cfg.udp_buffer));
    let granted = rt.granted.clone();
    let (ev_tx, mut ev_rx) = mpsc::channel(EVENT_QUEUE);
    let handler = Arc::new(Handler {
        tx: ev_tx,
        cancel: cancel.clone(),
    });

    let (certificate, local_fingerprint) = certificate()?;
    let pc = build(cfg, rt, handler, certificate).await?;

    let flags = Arc::new(Flags::default());
    let stop = CancellationToken::new();
    let (state_tx, mut state_rx) = watch::channel(DcState::Connecting);
    tasks.spawn(supervise(
        pc.clone(),
        cancel.clone(),
        stop.clone(),
        flags.clone(),
        state_rx.clone(),
    ));
    tasks.close();

    let dc = pc
        .create_data_channel(
            CHANNEL_LABEL,
            Some(RTCDataChannelInit {
                ordered: true,
                negotiated: Some(CHANNEL_ID),
                ..Default::default()
            }),
        )
        .await
        .map_err(|e| webrtc_err("creating the data channel", e))?;
    let (msg_tx, mut msg_rx) = mpsc::channel(INBOUND_QUEUE);
    tasks.spawn(poll_channel(dc.clone(), msg_tx, state_tx, stop));

    let negotiated = tokio::time::timeout(
        timeout,
        negotiate(role, &*pc, &out, &mut inp, &mut ev_rx, &mut state_rx),
    )
    .await;
    drop((out, inp, ev_rx));
    match negotiated {
        Ok(r) => r?,
        Err(_) => {
            return Err(Error::Timeout {
                what: "connecting to the peer over WebRTC (no route to peer: try TURN)",
            })
        }
    }
    // Both channels are open locally; make sure the peer's is too before any frame.
    let remaining = timeout.saturating_sub(started.elapsed());
    tokio::time::timeout(remaining, await_ready(&*dc, &mut msg_rx))
        .await
        .map_err(|_| Error::Timeout {
            what: "waiting for the peer's WebRTC data channel to open",
        })??;
    let setup_time = started.elapsed();

    let sctp = pc
        .sctp()
        .await
        .ok_or_else(|| Error::protocol("WebRTC: no SCTP transport after the channel opened"))?;
    let dtls = sctp.transport();
    let certs = dtls
        .get_remote_certificates()
        .await
        .map_err(|e| webrtc_err("reading the peer's DTLS certificate", e))?;
    let remote_cert = certs
        .first()
        .ok_or_else(|| Error::protocol("the peer presented no DTLS certificate"))?;
    let remote_fingerprint: [u8; 32] = Sha256::digest(remote_cert).into();
    let pair = dtls
        .ice_transport()
        .get_selected_candidate_pair()
        .await
        .map_err(|e| webrtc_err("reading the selected candidate pair", e))?
        .ok_or_else(|| Error::protocol("WebRTC: no selected candidate pair"))?;
    let pair = SelectedPair {
        local: kind(pair.local(), true),
        remote: kind(pair.remote(), false),
        local_addr: addr(pair.local()),
        remote_addr: addr(pair.remote()),
    };
    let msg_size = match sctp.max_message_size().await {
        Ok(0) | Err(_) => MESSAGE_SIZE,
        Ok(n) => (n as usize).min(MESSAGE_SIZE),
    };
    let udp_rcvbuf = granted.rcvbuf.load(Ordering::Relaxed);
    let udp_sndbuf = granted.sndbuf.load(Ordering::Relaxed);
    let path = pair.path();
    tracing::info!(
        "webrtc: connected as {role:?} in {setup_time:?}: {} ({:?} {} <-> {:?} {}), \
         messages {msg_size} B, udp rcvbuf {udp_rcvbuf} sndbuf {udp_sndbuf}",
        path.as_str(),
        pair.local,
        pair.local_addr,
        pair.remote,
        pair.remote_addr,
    );

    let shared = Arc::new(Shared { _owner: owner });
    let conn = Conn {
        sink: Box::new(Sink {
            dc,
            msg_size,
            closed: false,
            flags: flags.clone(),
            _shared: shared.clone(),
        }),
        stream: Box::new(Stream {
            rx: msg_rx,
            reassembler: framing::Reassembler::default(),
            ended: None,
            flags,
            _shared: shared,
        }),
        path,
        remote: format!("webrtc:{}", pair.remote_addr),
    };
    Ok(RtcConn {
        conn,
        role,
        local_fingerprint,
        remote_fingerprint,
        pair,
        udp_rcvbuf,
        udp_sndbuf,
        setup_time,
        tasks,
    })
}

/// Sends `READY` every [`READY_INTERVAL`] until the peer's first message, which (the
/// channel being ordered) is its `READY`, then one more `READY`: the peer's proves its end
/// is open, so that last one cannot be lost to a channel that is not open yet.
async fn await_ready(dc: &dyn DataChannel, rx: &mut mpsc::Receiver<BytesMut>) -> Result<()> {
    let mut tick = tokio::time::interval(READY_INTERVAL);
    loop {
        tokio::select! {
            biased;
            m = rx.recv() => match m {
                Some(m) if framing::is_ready(&m) => {
                    dc.send(framing::ready()).await.map_err(closed)?;
                    return Ok(());
                }
                Some(_) => return Err(Error::protocol("WebRTC: the peer sent data before it was ready")),
                None => return Err(Error::ConnectionClosed),
            },
            _ = tick.tick() => {
                dc.send(framing::ready()).await.map_err(closed)?;
            }
        }
    }
}

fn webrtc_err(what: &str, e: impl fmt::Display) -> Error {
    Error::Io {
        context: format!("WebRTC: {what}"),
        source: std::io::Error::other(e.to_string()),
    }
}

/// A fresh ECDSA P-256 certificate for DTLS and the SHA-256 of its DER encoding.
fn certificate() -> Result<(RTCCertificate, [u8; 32])> {
    use webrtc::peer_connection::crypto::{default_provider, SignatureScheme};
    let provider = default_provider().map_err(|e| webrtc_err("crypto provider", e))?;
    let params =
        rtc::peer_connection::certificate::CertificateParams::new(vec!["skiff".to_owned()])
            .map_err(|e| webrtc_err("certificate parameters", e))?;
    let cert =
        RTCCertificate::generate(provider.crypto(), SignatureScheme::EcdsaP256Sha256, params)
            .map_err(|e| webrtc_err("generating the DTLS certificate", e))?;
    let der = cert
        .dtls_certificate
        .certificate
        .first()
        .ok_or_else(|| Error::protocol("generated DTLS certificate is empty"))?;
    let fp: [u8; 32] = Sha256::digest(der.as_ref()).into();
    Ok((cert, fp))
}

async fn build(
    cfg: &RtcConfig,
    rt: Arc<runtime::ConnRuntime>,
    handler: Arc<Handler>,
    certificate: RTCCertificate,
) -> Result<Arc<dyn PeerConnection>> {
    let ice_servers = cfg
        .ice_servers
        .iter()
        .map(|s| RTCIceServer {
            urls: s.urls.clone(),
            username: s.username.clone(),
            credential: s.credential.clone(),
        })
        .collect();
    let policy = if cfg.relay_only {
        RTCIceTransportPolicy::Relay
    } else {
        RTCIceTransportPolicy::All
    };
    let config = RTCConfigurationBuilder::new()
        .with_ice_servers(ice_servers)
        .with_ice_transport_policy(policy)
        .with_certificates(vec![certificate])
        .build();
    let mut settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
        .with_sctp_max_message_size(
            rtc::peer_connection::configuration::setting_engine::SctpMaxMessageSize::Bounded(
                MESSAGE_SIZE as u32,
            ),
        );
    settings = settings.with_relay_acceptance_min_wait(Some(if cfg.relay_only {
        // Nothing better than a relay can turn up: nominate the first working pair.
        Duration::ZERO
    } else {
        // A direct pair shows up within a few round trips or not at all: waiting ICE's
        // default 2 s for one before taking the relay only delays the TURN case.
        RELAY_ACCEPTANCE_WAIT
    }));
    if let Some(w) = cfg.sctp_receive_window {
        settings = settings.with_sctp_max_receive_buffer_size(w);
    }
    let bind: Vec<SocketAddr> = if cfg.bind.is_empty() {
        vec![SocketAddr::from(([0, 0, 0, 0], 0))]
    } else {
        cfg.bind.clone()
    };
    let pc = PeerConnectionBuilder::new()
        .with_configuration(config)
        .with_setting_engine(settings.build())
        .with_runtime(rt)
        .with_handler(handler)
        .with_udp_addrs(bind)
        .with_data_channel_send_buffer_limit(cfg.send_buffer_limit)
        .build()
        .await
        .map_err(|e| webrtc_err("starting the peer connection", e))?;
    Ok(Arc::new(pc))
}

/// Events from the driver to the negotiation loop. The handler never blocks the driver.
enum PcEvent {
    Candidate(String),
    GatheringComplete,
    Disconnected,
    Failed,
}

struct Handler {
    tx: mpsc::Sender<PcEvent>,
    cancel: CancellationToken,
}

impl Handler {
    fn emit(&self, ev: PcEvent) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(ev) {
            tracing::warn!("webrtc: event queue full, dropping an event");
        }
    }
}

#[async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_candidate(&self, event: RTCPeerConnectionIceEvent) {
        match event
            .candidate
            .to_json()
            .map_err(|e| e.to_string())
            .and_then(|c| serde_json::to_string(&c).map_err(|e| e.to_string()))
        {
            Ok(json) => self.emit(PcEvent::Candidate(json)),
            Err(e) => tracing::debug!("webrtc: unencodable local candidate: {e}"),
        }
    }

    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            self.emit(PcEvent::GatheringComplete);
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        tracing::debug!("webrtc: connection state {state}");
        // `Closed` only follows our own `close`; a peer's clean close ends the channel
        // (and the polling task) through DTLS `close_notify` instead.
        if state == RTCPeerConnectionState::Disconnected {
            self.emit(PcEvent::Disconnected);
        }
        if state == RTCPeerConnectionState::Failed {
            self.emit(PcEvent::Failed);
            // The peer is unreachable: tear down, which wakes blocked senders and ends
            // the stream with an error.
            self.cancel.cancel();
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DcState {
    Connecting,
    Open,
    Closed,
}

async fn send_signal(out: &mpsc::Sender<RtcSignal>, s: RtcSignal) -> Result<()> {
    out.send(s).await.map_err(|_| Error::Signal {
        reason: "the signaling channel closed while connecting".to_owned(),
    })
}

fn sdp_err(what: &str, e: impl fmt::Display) -> Error {
    Error::protocol(format!("WebRTC {what}: {e}"))
}

async fn negotiate(
    role: RtcRole,
    pc: &dyn PeerConnection,
    out: &mpsc::Sender<RtcSignal>,
    inp: &mut mpsc::Receiver<RtcSignal>,
    events: &mut mpsc::Receiver<PcEvent>,
    state: &mut watch::Receiver<DcState>,
) -> Result<()> {
    if role == RtcRole::Offerer {
        let offer = pc
            .create_offer(None)
            .await
            .map_err(|e| sdp_err("creating the offer", e))?;
        let sdp = offer.sdp.clone();
        pc.set_local_description(offer)
            .await
            .map_err(|e| sdp_err("setting the offer", e))?;
        send_signal(out, RtcSignal::Offer(sdp)).await?;
    }
    let mut remote_set = false;
    let mut early: Vec<RTCIceCandidateInit> = Vec::new();
    let mut inp_open = true;
    loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(PcEvent::Candidate(json)) => {
                    send_signal(out, RtcSignal::Candidate(json)).await?;
                }
                Some(PcEvent::GatheringComplete) => {
                    send_signal(out, RtcSignal::EndOfCandidates).await?;
                }
                // ICE worked and then went quiet before the channel opened: the peer's
                // stack gave up, almost always on the DTLS handshake.
                Some(PcEvent::Disconnected) => return Err(handshake_failed()),
                Some(PcEvent::Failed) | None => {
                    return Err(Error::Timeout {
                        what: "connecting to the peer over WebRTC: ICE failed \
                               (no route to peer: try TURN)",
                    });
                }
            },
            sig = inp.recv(), if inp_open => match sig {
                None => {
                    if !remote_set {
                        return Err(Error::Signal {
                            reason: "the signaling channel closed before the peer answered"
                                .to_owned(),
                        });
                    }
                    inp_open = false;
                }
                Some(RtcSignal::Offer(sdp)) if role == RtcRole::Answerer && !remote_set => {
                    let offer = RTCSessionDescription::offer(sdp)
                        .map_err(|e| sdp_err("parsing the offer", e))?;
                    pc.set_remote_description(offer)
                        .await
                        .map_err(|e| sdp_err("applying the offer", e))?;
                    remote_set = true;
                    add_candidates(pc, early.drain(..)).await;
                    let answer = pc
                        .create_answer(None)
                        .await
                        .map_err(|e| sdp_err("creating the answer", e))?;
                    let sdp = answer.sdp.clone();
                    pc.set_local_description(answer)
                        .await
                        .map_err(|e| sdp_err("setting the answer", e))?;
                    send_signal(out, RtcSignal::Answer(sdp)).await?;
                }
                Some(RtcSignal::Answer(sdp)) if role == RtcRole::Offerer && !remote_set => {
                    let answer = RTCSessionDescription::answer(sdp)
                        .map_err(|e| sdp_err("parsing the answer", e))?;
                    pc.set_remote_description(answer)
                        .await
                        .map_err(|e| sdp_err("applying the answer", e))?;
                    remote_set = true;
                    add_candidates(pc, early.drain(..)).await;
                }
                Some(RtcSignal::Candidate(json)) => {
                    let c: RTCIceCandidateInit = serde_json::from_str(&json)
                        .map_err(|e| Error::protocol(format!("bad ICE candidate: {e}")))?;
                    if remote_set {
                        add_candidates(pc, [c]).await;
                    } else if early.len() < MAX_EARLY_CANDIDATES {
                        early.push(c);
                    } else {
                        return Err(Error::protocol("too many ICE candidates before the SDP"));
                    }
                }
                Some(RtcSignal::EndOfCandidates) => {
                    tracing::debug!("webrtc: the peer has no more candidates");
                }
                Some(other) => {
                    return Err(Error::protocol(format!(
                        "unexpected signaling message for the {role:?}: {}",
                        match other {
                            RtcSignal::Offer(_) => "offer",
                            RtcSignal::Answer(_) => "answer",
                            _ => "other",
                        }
                    )));
                }
            },
            changed = state.changed() => {
                let now = *state.borrow_and_update();
                match (changed, now) {
                    (_, DcState::Open) => return Ok(()),
                    // The stack ended the channel before it opened: here that is a failed
                    // DTLS handshake (certificate not matching the signaled fingerprint).
                    (Err(_), _) | (_, DcState::Closed) => return Err(handshake_failed()),
                    (Ok(()), DcState::Connecting) => {}
                }
            }
        }
    }
}

fn handshake_failed() -> Error {
    Error::protocol(
        "WebRTC: the DTLS handshake with the peer failed (its certificate did not match \
         the signaled fingerprint, or it went away)",
    )
}

async fn add_candidates(
    pc: &dyn PeerConnection,
    candidates: impl IntoIterator<Item = RTCIceCandidateInit>,
) {
    for c in candidates {
        if let Err(e) = pc.add_ice_candidate(c).await {
            // One unusable candidate (another address family, mDNS, TCP) is not fatal.
            tracing::debug!("webrtc: ignoring a remote candidate: {e}");
        }
    }
}

/// The one polling task of the channel (performance guide §4.4: if nothing polls, the
/// driver stops delivering). Ends when the channel closes or `stop` fires.
async fn poll_channel(
    dc: Arc<dyn DataChannel>,
    tx: mpsc::Sender<BytesMut>,
    state: watch::Sender<DcState>,
    stop: CancellationToken,
) {
    let mut tx = Some(tx);
    loop {
        let ev = tokio::select! {
            biased;
            () = stop.cancelled() => break,
            ev = dc.poll() => ev,
        };
        match ev {
            None | Some(DataChannelEvent::OnClose) => break,
            Some(DataChannelEvent::OnOpen) => {
                state.send_replace(DcState::Open);
            }
            Some(DataChannelEvent::OnMessage(msg)) => {
                let Some(t) = &tx else { continue };
                let sent = tokio::select! {
                    biased;
                    () = stop.cancelled() => break,
                    r = t.send(msg.data) => r,
                };
                if sent.is_err() {
                    // The stream half is gone; keep polling for the sink's sake.
                    tx = None;
                }
            }
            Some(DataChannelEvent::OnError) => tracing::debug!("webrtc: data channel error"),
            Some(_) => {}
        }
    }
    state.send_replace(DcState::Closed);
}

/// Waits for teardown, then closes the peer connection (which stops the driver and ends
/// the channel's event stream) and finally stops the polling task.
async fn supervise(
    pc: Arc<dyn PeerConnection>,
    cancel: CancellationToken,
    stop: CancellationToken,
    flags: Arc<Flags>,
    mut state: watch::Receiver<DcState>,
) {
    cancel.cancelled().await;
    if flags.fin_sent.load(Ordering::Acquire) && !flags.fin_received.load(Ordering::Acquire) {
        // We closed first: give the peer a moment to read our FIN and close its side.
        let _ = tokio::time::timeout(LINGER, state.wait_for(|s| *s == DcState::Closed)).await;
    }
    match tokio::time::timeout(CLOSE_TIMEOUT, pc.close()).await {
        Ok(Ok(())) => tracing::debug!("webrtc: peer connection closed"),
        Ok(Err(e)) => tracing::debug!("webrtc: closing the peer connection: {e}"),
        Err(_) => tracing::warn!("webrtc: closing the peer connection timed out"),
    }
    stop.cancel();
}

#[derive(Default)]
struct Flags {
    fin_sent: AtomicBool,
    fin_received: AtomicBool,
}

/// Cancels the connection's token when dropped: on an early return from `connect`, or
/// when both halves of the `Conn` are gone.
struct Owner {
    cancel: CancellationToken,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

struct Shared {
    _owner: Owner,
}

struct Sink {
    dc: Arc<dyn DataChannel>,
    msg_size: usize,
    closed: bool,
    flags: Arc<Flags>,
    _shared: Arc<Shared>,
}

fn closed(e: impl fmt::Display) -> Error {
    tracing::debug!("webrtc: {e}");
    Error::ConnectionClosed
}

#[async_trait]
impl FrameSink for Sink {
    async fn send(&mut self, frame: Vec<u8>) -> Result<()> {
        if self.closed {
            return Err(Error::ConnectionClosed);
        }
        for msg in framing::split(&frame, self.msg_size)? {
            // Waits while the send buffer is at its limit (back-pressure).
            self.dc.send(msg).await.map_err(closed)?;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.dc.send(framing::fin()).await.map_err(closed)?;
        self.flags.fin_sent.store(true, Ordering::Release);
        let deadline = Instant::now() + FLUSH_TIMEOUT;
        loop {
            if self.dc.outstanding_bytes().await.map_err(closed)? == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    what: "waiting for the peer to acknowledge the last bytes",
                });
            }
            tokio::time::sleep(FLUSH_POLL).await;
        }
    }
}

enum Ended {
    Fin,
    Broken,
}

struct Stream {
    rx: mpsc::Receiver<BytesMut>,
    reassembler: framing::Reassembler,
    ended: Option<Ended>,
    flags: Arc<Flags>,
    _shared: Arc<Shared>,
}

#[async_trait]
impl FrameStream for Stream {
    async fn recv(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        match self.ended {
            Some(Ended::Fin) => return Ok(None),
            Some(Ended::Broken) => return Err(Error::ConnectionClosed),
            None => {}
        }
        loop {
            let Some(msg) = self.rx.recv().await else {
                self.ended = Some(Ended::Broken);
                return Err(Error::ConnectionClosed);
            };
            match self.reassembler.push(&msg, max) {
                Ok(framing::Step::More) => {}
                Ok(framing::Step::Frame(f)) => return Ok(Some(f)),
                Ok(framing::Step::Fin) => {
                    self.ended = Some(Ended::Fin);
                    self.flags.fin_received.store(true, Ordering::Release);
                    return Ok(None);
                }
                Err(e) => {
                    self.ended = Some(Ended::Broken);
                    return Err(e);
                }
            }
        }
    }
}

fn kind(c: &RTCIceCandidate, local: bool) -> CandidateKind {
    match c.typ {
        RTCIceCandidateType::Host => CandidateKind::Host,
        RTCIceCandidateType::Srflx => CandidateKind::ServerReflexive,
        RTCIceCandidateType::Prflx => CandidateKind::PeerReflexive,
        RTCIceCandidateType::Relay => CandidateKind::Relay(relay_protocol(c, local)),
        _ => CandidateKind::Unknown,
    }
}

/// The transport of a relay candidate's TURN leg. `rtc` 0.21.1 sets neither
/// `relay_protocol` nor `url` on the candidates of the selected pair, so for our own relay
/// candidate the answer is UDP: the 0.21.1 TURN client allocates over UDP only (it skips
/// `turns:` and `?transport=tcp` URLs, webrtc `turn_relayer.rs`). The fields are still read
/// first, for when a later version fills them in.
fn relay_protocol(c: &RTCIceCandidate, local: bool) -> RelayProtocol {
    use rtc::peer_connection::transport::RTCIceServerTransportProtocol as P;
    match c.relay_protocol {
        P::Udp => return RelayProtocol::Udp,
        P::Tcp => return RelayProtocol::Tcp,
        P::Tls => return RelayProtocol::Tls,
        _ => {}
    }
    let Some(url) = c.url.as_deref() else {
        return if local {
            RelayProtocol::Udp
        } else {
            RelayProtocol::Unknown
        };
    };
    let url = url.to_ascii_lowercase();
    if url.starts_with("turns:") || url.contains("transport=tls") {
        RelayProtocol::Tls
    } else if url.contains("transport=tcp") {
        RelayProtocol::Tcp
    } else {
        RelayProtocol::Udp
    }
}

fn addr(c: &RTCIceCandidate) -> String {
    match c.address.parse::<IpAddr>() {
        Ok(ip) => SocketAddr::new(ip, c.port).to_string(),
        Err(_) => format!("{}:{}", c.address, c.port),
    }
}

fn is_local_ip(addr: &str) -> bool {
    let Ok(sa) = addr.parse::<SocketAddr>() else {
        return false;
    };
    match sa.ip() {
        IpAddr::V4(v4) => v4.is_private() || v4.is_loopback() || v4.is_link_local(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || (v6.segments()[0] & 0xfe00) == 0xfc00
                || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}
