//! Data paths of a paired transfer, negotiated over a sealed signaling channel.
//!
//! Owns: choosing how the bytes travel once both ends hold the resume secret, in order of
//! preference: the sender's direct TCP addresses (same LAN, reachable host), a WebRTC data
//! channel (ICE: host, server-reflexive and TURN/UDP candidates, trickled), and last a TCP
//! relay through the TURN server (RFC 6062) for networks that block UDP. Every WebRTC
//! description and candidate travels sealed (`proto::rendezvous`), so the DTLS
//! fingerprints are bound to the code; the fingerprint the DTLS handshake actually
//! presented is checked against the sealed description once more. Whatever the path, the
//! data connection then runs the resume handshake, so its keys come from the secret and
//! never from the path.
//! Must not: carry file data on the signaling channel, or hand out a data connection that
//! has not authenticated with the resume secret (the sender's seeder authenticates the
//! connections it gets from here the same way as those on its TCP listener).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use sha2::{Digest, Sha256};
use skiff_proto::frame::{Plain, COUNTER_LEN};
use skiff_proto::rendezvous::{ReceiverSignal, RtcMsg, SenderSignal};
use tokio::sync::mpsc;

use crate::crypto::Secret;
use crate::session::{self, Channel};
use crate::transport::turn_tcp::{self, TcpAllocation, TurnServer};
use crate::transport::webrtc::{self, RtcConfig, RtcRole, RtcSignal};
use crate::transport::{tcp, Conn};
use crate::{Error, Result};

/// How long the receiver tries the sender's TCP addresses before moving on.
pub const TCP_TIMEOUT: Duration = Duration::from_millis(1500);
/// ICE gathering, checks and the DTLS/SCTP setup together.
pub const RTC_TIMEOUT: Duration = Duration::from_secs(12);
/// When WebRTC has not connected by then, the receiver also asks for the TCP relay.
pub const TURN_FALLBACK_AFTER: Duration = Duration::from_secs(4);
/// How long the sender's TCP relay allocation waits for the receiver.
const TURN_ACCEPT_TIMEOUT: Duration = Duration::from_secs(30);
/// Waiting for the peer's next negotiation message.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(15);

type BoxFut<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Awaits `f` if there is one, else never resolves (for optional `select!` branches).
async fn maybe<T>(f: &mut Option<BoxFut<T>>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// Reads the next sealed control message of the signaling channel; `None` when it closed.
async fn next_control(sig: &mut Channel) -> Result<Option<Vec<u8>>> {
    let Some(frame) = sig.rx.recv().await? else {
        return Ok(None);
    };
    match Plain::parse(&frame[COUNTER_LEN..]).map_err(|e| Error::protocol(e.to_string()))? {
        Plain::Control(body) => Ok(Some(body.to_vec())),
        _ => Err(Error::protocol("file data on the signaling channel")),
    }
}

fn to_wire(s: RtcSignal) -> RtcMsg {
    match s {
        RtcSignal::Offer(t) => RtcMsg::Offer(t),
        RtcSignal::Answer(t) => RtcMsg::Answer(t),
        RtcSignal::Candidate(t) => RtcMsg::Candidate(t),
        RtcSignal::EndOfCandidates => RtcMsg::EndOfCandidates,
    }
}

fn from_wire(m: RtcMsg) -> RtcSignal {
    match m {
        RtcMsg::Offer(t) => RtcSignal::Offer(t),
        RtcMsg::Answer(t) => RtcSignal::Answer(t),
        RtcMsg::Candidate(t) => RtcSignal::Candidate(t),
        RtcMsg::EndOfCandidates => RtcSignal::EndOfCandidates,
    }
}

/// The SHA-256 fingerprints an SDP announces (`a=fingerprint:sha-256 AB:CD:…`).
fn sdp_fingerprints(sdp: &str) -> Vec<[u8; 32]> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=fingerprint:"))
        .filter_map(|v| {
            let (alg, hexes) = v.split_once(' ')?;
            if !alg.eq_ignore_ascii_case("sha-256") {
                return None;
            }
            let bytes = hex::decode(hexes.trim().replace(':', "")).ok()?;
            <[u8; 32]>::try_from(bytes.as_slice()).ok()
        })
        .collect()
}

/// The certificate the peer presented in DTLS must be the one its sealed description named.
fn check_fingerprint(remote_sdp: Option<&str>, presented: &[u8; 32]) -> Result<()> {
    let announced = remote_sdp.map(sdp_fingerprints).unwrap_or_default();
    if announced.iter().any(|f| f == presented) {
        Ok(())
    } else {
        Err(Error::PeerVerification {
            reason: format!(
                "the peer's DTLS certificate ({}) is not the one in its sealed description",
                &hex::encode(Sha256::digest(presented))[..16]
            ),
        })
    }
}

/// One WebRTC attempt: the connection future plus the queues that feed it.
struct RtcAttempt {
    fut: Option<BoxFut<Result<webrtc::RtcConn>>>,
    to_peer: mpsc::Receiver<RtcSignal>,
    from_peer: mpsc::Sender<RtcSignal>,
    remote_sdp: Option<String>,
}

impl RtcAttempt {
    fn start(role: RtcRole, cfg: &RtcConfig) -> Self {
        let (out_tx, out_rx) = mpsc::channel(64);
        let (in_tx, in_rx) = mpsc::channel(64);
        let cfg = cfg.clone();
        Self {
            fut: Some(Box::pin(async move {
                webrtc::connect(role, &cfg, out_tx, in_rx, RTC_TIMEOUT).await
            })),
            to_peer: out_rx,
            from_peer: in_tx,
            remote_sdp: None,
        }
    }

    async fn feed(&mut self, m: RtcMsg) {
        if let RtcMsg::Offer(s) | RtcMsg::Answer(s) = &m {
            self.remote_sdp = Some(s.clone());
        }
        // A finished attempt no longer listens; late candidates are not needed.
        let _ = self.from_peer.send(from_wire(m)).await;
    }
}

/// Sender: answers one receiver's negotiation on `sig` — offers `tcp`, answers its
/// WebRTC offer — and hands each data connection made to `incoming`, where the seeder
/// authenticates it. Returns when the receiver closes the channel.
pub async fn serve(
    mut sig: Channel,
    tcp: Vec<String>,
    rtc: RtcConfig,
    incoming: mpsc::Sender<Conn>,
) -> Result<()> {
    sig.tx
        .send_control(&SenderSignal::Paths { tcp }.encode())
        .await?;
    let mut attempt: Option<RtcAttempt> = None;
    let mut connecting: Option<BoxFut<Result<webrtc::RtcConn>>> = None;
    let mut remote_sdp: Option<String> = None;
    let mut relaying: Option<BoxFut<Result<Conn>>> = None;
    loop {
        tokio::select! {
            done = maybe(&mut relaying) => {
                relaying = None;
                match done {
                    Ok(c) => {
                        if incoming.send(c).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::info!("TCP relay for the receiver failed: {e}"),
                }
            }
            body = next_control(&mut sig) => {
                let Some(body) = body? else { return Ok(()) };
                match ReceiverSignal::decode(&body).map_err(|e| Error::protocol(e.to_string()))? {
                    ReceiverSignal::Rtc { msg } => {
                        if matches!(msg, RtcMsg::Offer(_)) {
                            // A new offer starts a new attempt (the receiver retried).
                            let mut a = RtcAttempt::start(RtcRole::Answerer, &rtc);
                            connecting = a.fut.take();
                            attempt = Some(a);
                        }
                        if let Some(a) = attempt.as_mut() {
                            a.feed(msg).await;
                            remote_sdp = a.remote_sdp.clone();
                        }
                    }
                    ReceiverSignal::TurnTcp { public } => {
                        match allocate_for(&rtc, &public).await {
                            Ok(alloc) => {
                                let relayed = alloc.relayed_addr().to_string();
                                sig.tx.send_control(&SenderSignal::TurnTcp { relayed }.encode()).await?;
                                relaying = Some(Box::pin(async move {
                                    tokio::time::timeout(TURN_ACCEPT_TIMEOUT, alloc.accept())
                                        .await
                                        .map_err(|_| Error::Timeout { what: "waiting for the receiver at the TURN relay" })?
                                }));
                            }
                            Err(e) => {
                                tracing::info!("no TCP relay for the receiver: {e}");
                                sig.tx
                                    .send_control(&SenderSignal::Unavailable { what: "turn-tcp".into() }.encode())
                                    .await?;
                            }
                        }
                    }
                    _ => return Err(Error::protocol("unknown signal from the receiver")),
                }
            }
            out = async { match attempt.as_mut() { Some(a) => a.to_peer.recv().await, None => std::future::pending().await } } => {
                match out {
                    Some(s) => sig.tx.send_control(&SenderSignal::Rtc { msg: to_wire(s) }.encode()).await?,
                    None => attempt = None,
                }
            }
            done = maybe(&mut connecting) => {
                connecting = None;
                match done.and_then(|c| check_fingerprint(remote_sdp.as_deref(), &c.remote_fingerprint).map(|()| c)) {
                    Ok(c) => {
                        if incoming.send(c.conn).await.is_err() {
                            return Ok(());
                        }
                    }
                    Err(e) => tracing::info!("webrtc answer failed: {e}"),
                }
            }
        }
    }
}

/// Receiver: gets an authenticated data channel to the sender through the paths it
/// offers on `sig`. `skip_tcp`: its TCP addresses were already tried.
pub async fn dial(
    sig: &mut Channel,
    secret: &Secret,
    rtc: &RtcConfig,
    skip_tcp: bool,
) -> Result<Channel> {
    let tcp = read_paths(sig).await?;
    if !skip_tcp {
        if let Ok(ch) = dial_tcp(&tcp, secret).await {
            return Ok(ch);
        }
    }
    let conn = dial_rtc(sig, rtc).await?;
    session::dial_resume(conn, secret).await
}

/// Receiver: the sender's first message on a sealed signaling channel, its direct TCP
/// addresses.
pub async fn read_paths(sig: &mut Channel) -> Result<Vec<String>> {
    let first = tokio::time::timeout(SIGNAL_TIMEOUT, next_control(sig))
        .await
        .map_err(|_| Error::Timeout {
            what: "waiting for the sender's paths",
        })??
        .ok_or(Error::ConnectionClosed)?;
    match SenderSignal::decode(&first).map_err(|e| Error::protocol(e.to_string()))? {
        SenderSignal::Paths { tcp } => Ok(tcp),
        _ => Err(Error::protocol("the sender did not start with its paths")),
    }
}

/// Receiver: the first of `addrs` to accept a TCP connection within [`TCP_TIMEOUT`],
/// authenticated with the resume secret.
pub async fn dial_tcp(addrs: &[String], secret: &Secret) -> Result<Channel> {
    let mut tries = tokio::task::JoinSet::new();
    for a in addrs.iter().take(skiff_proto::rendezvous::MAX_PATHS) {
        let a = a.clone();
        tries.spawn(async move { tokio::time::timeout(TCP_TIMEOUT, tcp::dial(&a)).await });
    }
    let mut last = Error::Timeout {
        what: "connecting to the sender's addresses",
    };
    while let Some(r) = tries.join_next().await {
        match r {
            Ok(Ok(Ok(conn))) => {
                tries.abort_all();
                return session::dial_resume(conn, secret).await;
            }
            Ok(Ok(Err(e))) => last = e,
            _ => {}
        }
    }
    Err(last)
}

/// The TCP/TLS TURN servers among the ICE servers (TLS first).
fn tcp_turn_servers(rtc: &RtcConfig) -> Vec<TurnServer> {
    let ice: Vec<skiff_proto::signal::IceServer> = rtc
        .ice_servers
        .iter()
        .map(|s| skiff_proto::signal::IceServer {
            urls: s.urls.clone(),
            username: Some(s.username.clone()),
            credential: Some(s.credential.clone()),
        })
        .collect();
    TurnServer::from_ice(&ice)
}

/// Sender: a TCP allocation on the first TURN server that grants one, permitting the
/// receiver's public address `public` (as the TURN server saw it).
async fn allocate_for(rtc: &RtcConfig, public: &str) -> Result<TcpAllocation> {
    let ip = public
        .parse::<std::net::SocketAddr>()
        .map(|a| a.ip())
        .map_err(|_| Error::protocol("the receiver's public address is not an address"))?;
    let mut last = Error::protocol("no TURN server with TCP or TLS is configured");
    for server in tcp_turn_servers(rtc) {
        match TcpAllocation::allocate(&server).await {
            Ok(alloc) => match alloc.permit(ip).await {
                Ok(()) => return Ok(alloc),
                Err(e) => last = e,
            },
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Receiver: this side's public address as the first reachable TCP/TLS TURN server sees it.
async fn public_tcp_addr(servers: Vec<TurnServer>) -> Result<String> {
    let mut last = Error::protocol("no TURN server with TCP or TLS is configured");
    for server in &servers {
        match turn_tcp::public_addr(server).await {
            Ok(a) => return Ok(a.to_string()),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Receiver: a data connection over WebRTC (as the offerer) or, when that has not
/// connected within [`TURN_FALLBACK_AFTER`] (UDP blocked, say) or failed, over the sender's
/// TCP relay allocation on the TURN server — whichever works first.
async fn dial_rtc(sig: &mut Channel, rtc: &RtcConfig) -> Result<Conn> {
    let mut a = RtcAttempt::start(RtcRole::Offerer, rtc);
    let mut connecting = a.fut.take();
    let turn_servers = tcp_turn_servers(rtc);
    let mut fallback_at: Option<BoxFut<()>> = (!turn_servers.is_empty())
        .then(|| Box::pin(tokio::time::sleep(TURN_FALLBACK_AFTER)) as BoxFut<()>);
    let mut public: Option<BoxFut<Result<String>>> = None;
    let mut relay_dial: Option<BoxFut<Result<Conn>>> = None;
    let mut rtc_error: Option<Error> = None;
    let mut turn_error: Option<Error> = if turn_servers.is_empty() {
        Some(Error::protocol("no TURN server with TCP or TLS"))
    } else {
        None
    };
    let mut turn_started = false;
    loop {
        if let (Some(r), Some(t)) = (&rtc_error, &turn_error) {
            tracing::info!("TCP relay fallback: {t}");
            return Err(match r {
                Error::Timeout { .. } => Error::Timeout {
                    what: "connecting to the peer (no route to peer: try a TURN server, or check the firewall)",
                },
                _ => rtc_error.take().unwrap_or(Error::ConnectionClosed),
            });
        }
        let start_turn = tokio::select! {
            done = maybe(&mut connecting) => {
                connecting = None;
                match done.and_then(|c| check_fingerprint(a.remote_sdp.as_deref(), &c.remote_fingerprint).map(|()| c)) {
                    Ok(c) => return Ok(c.conn),
                    Err(e @ Error::PeerVerification { .. }) => return Err(e),
                    Err(e) => {
                        tracing::info!("WebRTC failed: {e}");
                        rtc_error = Some(e);
                        true
                    }
                }
            }
            () = maybe(&mut fallback_at) => {
                fallback_at = None;
                true
            }
            r = maybe(&mut public) => {
                public = None;
                match r {
                    Ok(public) => {
                        sig.tx.send_control(&ReceiverSignal::TurnTcp { public }.encode()).await?;
                    }
                    Err(e) => turn_error = Some(e),
                }
                false
            }
            r = maybe(&mut relay_dial) => {
                relay_dial = None;
                match r {
                    Ok(c) => return Ok(c),
                    Err(e) => turn_error = Some(e),
                }
                false
            }
            out = a.to_peer.recv(), if connecting.is_some() => {
                if let Some(s) = out {
                    sig.tx.send_control(&ReceiverSignal::Rtc { msg: to_wire(s) }.encode()).await?;
                }
                false
            }
            body = next_control(sig) => {
                let Some(body) = body? else { return Err(Error::ConnectionClosed) };
                match SenderSignal::decode(&body).map_err(|e| Error::protocol(e.to_string()))? {
                    SenderSignal::Rtc { msg } => a.feed(msg).await,
                    SenderSignal::Paths { .. } => {}
                    SenderSignal::TurnTcp { relayed } => {
                        let addr = relayed
                            .parse::<std::net::SocketAddr>()
                            .map_err(|_| Error::protocol("the relayed address is not an address"))?;
                        relay_dial = Some(Box::pin(turn_tcp::dial(addr)));
                    }
                    SenderSignal::Unavailable { what } => {
                        turn_error = Some(Error::protocol(format!("the sender cannot offer {what}")));
                    }
                    _ => return Err(Error::protocol("unknown signal from the sender")),
                }
                false
            }
        };
        if start_turn && !turn_started && turn_error.is_none() {
            turn_started = true;
            fallback_at = None;
            public = Some(Box::pin(public_tcp_addr(turn_servers.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_read_from_sdp_and_must_match() {
        let fp = [0xabu8; 32];
        let hexed = fp
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        let sdp = format!("v=0\r\na=fingerprint:sha-256 {hexed}\r\na=setup:actpass\r\n");
        assert_eq!(sdp_fingerprints(&sdp), vec![fp]);
        assert!(check_fingerprint(Some(&sdp), &fp).is_ok());
        let other = [0xcdu8; 32];
        let e = check_fingerprint(Some(&sdp), &other).unwrap_err();
        assert!(e.to_string().contains("peer verification failed"), "{e}");
        assert!(check_fingerprint(None, &fp).is_err());
        assert!(sdp_fingerprints("a=fingerprint:sha-1 AB:CD").is_empty());
    }
}
