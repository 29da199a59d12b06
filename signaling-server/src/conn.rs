//! One WebSocket session: hello, then a reader and a writer over the same socket.
//!
//! Owns: the per-connection rules: hello within the handshake deadline, the idle timeout
//! and server pings, the message-rate gate, typed errors and close codes, and delivery of
//! the hub's queued messages.
//! Must not: hold the hub lock across an await, log a blob, or let one socket's problem
//! reach another (a slow reader is dropped, never waited for).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use skiff_proto::signal::{
    close, negotiate_version, ClientMsg, ErrorCode, PeerId, ServerMsg, MAX_LABEL_LEN,
    MIN_SIGNAL_VERSION, SIGNAL_VERSION,
};
use skiff_proto::ProtoError;
use tokio::sync::mpsc;
use tokio::time::{timeout, timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::config::Limits;
use crate::hub::{Kick, Link, SpaceKey};
use crate::limits::{FloodGate, Gate, IpKey};
use crate::metrics::{Metrics, Reason};
use crate::server::Shared;
use crate::turn;

/// How the session ends.
#[derive(Debug)]
enum End {
    /// Send this close frame (after what is already queued).
    Close(u16, &'static str),
    /// The client closed: finish the close handshake.
    ClientClosed,
    /// The socket is gone or must be dropped at once.
    Drop,
    /// Server shutdown: tell the client to reconnect.
    Shutdown,
}

/// How long a closing socket gets to take its last messages and the close frame.
const CLOSE_FLUSH: Duration = Duration::from_secs(1);

fn read_error(e: &WsError, metrics: &Metrics) -> End {
    match e {
        WsError::Capacity(_) => {
            metrics.reject(Reason::TooLarge);
            End::Close(close::TOO_BIG, "message too big")
        }
        WsError::Utf8(_) => {
            metrics.reject(Reason::Malformed);
            End::Close(close::INVALID_DATA, "invalid UTF-8")
        }
        WsError::Protocol(_) => {
            metrics.reject(Reason::Malformed);
            End::Close(1002, "protocol error")
        }
        _ => End::Drop,
    }
}

/// Serves one upgraded socket until it ends. `deadline` bounds the time to `hello`.
pub(crate) async fn serve_socket<S>(shared: Arc<Shared>, ws: S, ip: IpAddr, deadline: Instant)
where
    S: Stream<Item = Result<Message, WsError>> + Sink<Message, Error = WsError> + Unpin,
{
    let (mut sink, mut stream) = ws.split();
    let metrics = shared.metrics.clone();
    let hello = tokio::select! {
        biased;
        () = shared.stop.cancelled() => Err((End::Shutdown, None)),
        r = timeout_at(deadline, read_hello(&mut stream, &metrics)) => match r {
            Ok(r) => r,
            Err(_) => {
                metrics.reject(Reason::HandshakeTimeout);
                Err((End::Close(close::POLICY, "no hello in time"), None))
            }
        },
    };
    let (device_id, name, space, version) = match hello {
        Ok(h) => h,
        Err((end, reply)) => {
            finish(&mut sink, None, reply, end, &shared).await;
            return;
        }
    };
    let limits = &shared.config.limits;
    let key = IpKey::of(ip);
    let space = match space {
        Some(name) => SpaceKey::Named(name),
        None => SpaceKey::Ip(key),
    };
    let (link, mut rx) = Link::new(limits.max_outbound_bytes);
    let peer_id = {
        let mut hub = shared.lock_hub();
        let (peer_id, snapshot) = hub.join(device_id, name, space, link.clone());
        // Pushed under the lock, so no event for this peer can overtake its welcome.
        let (ice_servers, ice_ttl_secs) =
            turn::ice_servers(&shared.config.turn, peer_id.as_str(), SystemTime::now());
        link.push(&ServerMsg::Welcome {
            version,
            peer_id: peer_id.clone(),
            ice_servers,
            ice_ttl_secs,
        });
        link.push(&ServerMsg::Peers { list: snapshot });
        peer_id
    };
    Metrics::inc(&metrics.sessions);
    Metrics::inc(&metrics.sessions_total);
    tracing::debug!(peer = %peer_id, %key, "session started");

    let end = {
        let mut session = Session {
            shared: &shared,
            link: &link,
            peer_id: &peer_id,
            key,
        };
        let reader = session.read_loop(&mut stream);
        let writer = write_loop(&mut sink, &mut rx, &link, limits);
        tokio::select! {
            biased;
            () = shared.stop.cancelled() => End::Shutdown,
            () = link.kicked.cancelled() => match link.kick_reason() {
                Some(Kick::Replaced) => {
                    metrics.reject(Reason::Replaced);
                    End::Close(close::POLICY, "replaced by a newer connection of this device")
                }
                _ => {
                    metrics.reject(Reason::SlowReader);
                    End::Drop
                }
            },
            end = reader => end,
            end = writer => end,
        }
    };
    shared.lock_hub().leave(&peer_id);
    Metrics::dec(&metrics.sessions);
    tracing::debug!(peer = %peer_id, end = ?end, "session ended");
    finish(&mut sink, Some((&mut rx, &link)), None, end, &shared).await;
}

type Hello = (
    skiff_proto::signal::DeviceId,
    String,
    Option<skiff_proto::signal::SpaceName>,
    u16,
);

/// Waits for `hello`; anything else first is an error that ends the session.
async fn read_hello<St>(
    stream: &mut St,
    metrics: &Metrics,
) -> Result<Hello, (End, Option<ServerMsg>)>
where
    St: Stream<Item = Result<Message, WsError>> + Unpin,
{
    loop {
        let msg = match stream.next().await {
            None => return Err((End::Drop, None)),
            Some(Err(e)) => return Err((read_error(&e, metrics), None)),
            Some(Ok(m)) => m,
        };
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => return Err((End::ClientClosed, None)),
            Message::Binary(_) => {
                metrics.reject(Reason::Malformed);
                let e = ServerMsg::error(
                    ErrorCode::Malformed,
                    "binary frames are not part of the protocol",
                );
                return Err((End::Close(close::POLICY, "malformed message"), Some(e)));
            }
            _ => continue,
        };
        Metrics::inc(&metrics.messages_received);
        match ClientMsg::decode(text.as_str()) {
            Ok(ClientMsg::Hello {
                version,
                device_id,
                name,
                space,
            }) => {
                let Some(version) = negotiate_version(version) else {
                    metrics.reject(Reason::UnsupportedVersion);
                    let e = ServerMsg::error(
                        ErrorCode::UnsupportedVersion,
                        format!(
                            "this server speaks versions {MIN_SIGNAL_VERSION} to {SIGNAL_VERSION}"
                        ),
                    );
                    return Err((End::Close(close::POLICY, "unsupported version"), Some(e)));
                };
                if name.len() > MAX_LABEL_LEN || name.chars().any(char::is_control) {
                    metrics.reject(Reason::Malformed);
                    let e = ServerMsg::error(
                        ErrorCode::Malformed,
                        format!(
                            "name must be at most {MAX_LABEL_LEN} bytes without control characters"
                        ),
                    );
                    return Err((End::Close(close::POLICY, "malformed message"), Some(e)));
                }
                return Ok((device_id, name, space, version));
            }
            Ok(_) => {
                let e = ServerMsg::error(ErrorCode::HelloFirst, "the first message must be hello");
                return Err((End::Close(close::POLICY, "hello first"), Some(e)));
            }
            Err(e) => return Err(malformed(&e, metrics)),
        }
    }
}

fn malformed(e: &ProtoError, metrics: &Metrics) -> (End, Option<ServerMsg>) {
    if let ProtoError::TooLarge { .. } = e {
        metrics.reject(Reason::TooLarge);
        return (End::Close(close::TOO_BIG, "message too big"), None);
    }
    metrics.reject(Reason::Malformed);
    // The decoder's reason names fields and positions, never echoes the content at length.
    let mut reason = e.to_string();
    reason.truncate(200);
    (
        End::Close(close::POLICY, "malformed message"),
        Some(ServerMsg::error(ErrorCode::Malformed, reason)),
    )
}

/// Sends whatever is queued (when closing politely) and the close frame, within a bound.
async fn finish<Si>(
    sink: &mut Si,
    queue: Option<(&mut mpsc::UnboundedReceiver<String>, &Link)>,
    reply: Option<ServerMsg>,
    end: End,
    shared: &Shared,
) where
    Si: Sink<Message, Error = WsError> + Unpin,
{
    let frame = |code: u16, reason: &'static str| {
        Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        }))
    };
    let (close_msg, bound) = match end {
        End::Drop => return,
        End::ClientClosed => {
            let _ = timeout(CLOSE_FLUSH, sink.flush()).await;
            return;
        }
        End::Close(code, reason) => (frame(code, reason), CLOSE_FLUSH),
        End::Shutdown => (
            frame(close::RESTART, "server restarting, reconnect"),
            Limits::secs(shared.config.limits.shutdown_grace_secs),
        ),
    };
    let _ = timeout(bound, async {
        if let Some((rx, link)) = queue {
            while let Ok(text) = rx.try_recv() {
                link.sent(text.len());
                sink.feed(Message::text(text)).await?;
            }
        }
        if let Some(reply) = reply {
            sink.feed(Message::text(reply.encode())).await?;
        }
        sink.send(close_msg).await?;
        sink.close().await
    })
    .await;
}

/// Moves queued messages onto the socket and pings on schedule.
async fn write_loop<Si>(
    sink: &mut Si,
    rx: &mut mpsc::UnboundedReceiver<String>,
    link: &Link,
    limits: &Limits,
) -> End
where
    Si: Sink<Message, Error = WsError> + Unpin,
{
    let every = Limits::secs(limits.ping_interval_secs);
    let mut ping = tokio::time::interval_at(Instant::now() + every, every);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let sent = tokio::select! {
            biased;
            text = rx.recv() => {
                let Some(text) = text else { return End::Drop };
                let n = text.len();
                let r = sink.feed(Message::text(text)).await;
                link.sent(n);
                let mut r = r;
                while r.is_ok() {
                    let Ok(text) = rx.try_recv() else { break };
                    let n = text.len();
                    r = sink.feed(Message::text(text)).await;
                    link.sent(n);
                }
                match r {
                    Ok(()) => sink.flush().await,
                    Err(e) => Err(e),
                }
            }
            _ = ping.tick() => sink.send(Message::Ping(Default::default())).await,
        };
        if sent.is_err() {
            return End::Drop;
        }
    }
}

struct Session<'a> {
    shared: &'a Shared,
    link: &'a Link,
    peer_id: &'a PeerId,
    key: IpKey,
}

impl Session<'_> {
    async fn read_loop<St>(&mut self, stream: &mut St) -> End
    where
        St: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let limits = &self.shared.config.limits;
        let metrics = &self.shared.metrics;
        let idle = Limits::secs(limits.idle_timeout_secs);
        let mut gate = FloodGate::new(limits, Instant::now());
        loop {
            let msg = match timeout(idle, stream.next()).await {
                Err(_) => {
                    metrics.reject(Reason::Idle);
                    return End::Close(close::POLICY, "idle timeout");
                }
                Ok(None) => return End::Drop,
                Ok(Some(Err(e))) => return read_error(&e, metrics),
                Ok(Some(Ok(m))) => m,
            };
            // Data frames and pings count against the rate (a ping flood costs CPU too).
            if matches!(
                msg,
                Message::Text(_) | Message::Binary(_) | Message::Ping(_)
            ) {
                Metrics::inc(&metrics.messages_received);
                match gate.check(Instant::now()) {
                    Gate::Pass => {}
                    Gate::Drop { first } => {
                        metrics.reject(Reason::RateLimited);
                        if first {
                            self.link.push(&ServerMsg::error(
                                ErrorCode::RateLimited,
                                format!(
                                    "more than {} messages per second: messages are dropped",
                                    limits.messages_per_sec
                                ),
                            ));
                        }
                        continue;
                    }
                    Gate::Close => {
                        metrics.reject(Reason::Flood);
                        return End::Close(close::POLICY, "message rate exceeded");
                    }
                }
            }
            let text = match msg {
                Message::Text(t) => t,
                Message::Close(_) => return End::ClientClosed,
                Message::Binary(_) => {
                    metrics.reject(Reason::Malformed);
                    self.link.push(&ServerMsg::error(
                        ErrorCode::Malformed,
                        "binary frames are not part of the protocol",
                    ));
                    return End::Close(close::POLICY, "malformed message");
                }
                // Pings are answered by the WebSocket layer; any frame counts as life.
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
            };
            match ClientMsg::decode(text.as_str()) {
                Ok(msg) => self.handle(msg),
                Err(e) => {
                    let (end, reply) = malformed(&e, metrics);
                    if let Some(reply) = reply {
                        self.link.push(&reply);
                    }
                    return end;
                }
            }
        }
    }

    fn reply_error(&self, code: ErrorCode, message: &str) {
        self.link.push(&ServerMsg::error(code, message));
    }

    fn handle(&mut self, msg: ClientMsg) {
        let shared = self.shared;
        let id = self.peer_id;
        match msg {
            ClientMsg::Hello { .. } => {
                self.reply_error(ErrorCode::HelloFirst, "hello was already received")
            }
            ClientMsg::Allocate => match shared.lock_hub().allocate(id, Instant::now()) {
                Ok(nameplate) => {
                    self.link.push(&ServerMsg::Allocated { nameplate });
                }
                Err(code) => self.reply_error(code, "cannot allocate another nameplate"),
            },
            ClientMsg::Claim { nameplate } => {
                let now = Instant::now();
                if shared.lock_ips().claims_blocked(self.key, now) {
                    shared.metrics.reject(Reason::ClaimsBlocked);
                    return self.reply_error(
                        ErrorCode::TooManyAttempts,
                        "too many failed claims from your address: try again later",
                    );
                }
                let result = shared.lock_hub().claim(id, &nameplate);
                match result {
                    Ok(peer) => {
                        self.link.push(&ServerMsg::Claimed { nameplate, peer });
                    }
                    Err(ErrorCode::NameplateUnavailable) => {
                        shared.metrics.reject(Reason::NameplateUnavailable);
                        if shared.lock_ips().claim_failed(self.key, now) {
                            tracing::info!(key = %self.key, "claims blocked after repeated failures");
                        }
                        self.reply_error(
                            ErrorCode::NameplateUnavailable,
                            "no such nameplate, or it is full",
                        );
                    }
                    Err(code) => self.reply_error(code, "cannot claim another nameplate"),
                }
            }
            ClientMsg::Release { nameplate } => match shared.lock_hub().release(id, &nameplate) {
                Ok(()) => {
                    self.link.push(&ServerMsg::Released { nameplate });
                }
                Err(code) => self.reply_error(code, "you are not in that nameplate"),
            },
            ClientMsg::Send { to, blob } => {
                if shared.lock_hub().relay(id, &to, blob).is_err() {
                    shared.metrics.reject(Reason::UnknownPeer);
                    self.reply_error(
                        ErrorCode::UnknownPeer,
                        "no such peer in your nameplates or space",
                    );
                }
            }
            ClientMsg::RefreshIce => {
                if shared.config.turn.secret.is_none() {
                    return self.reply_error(ErrorCode::NoTurn, "this server has no TURN service");
                }
                if !shared
                    .lock_ips()
                    .allow_ice_refresh(self.key, Instant::now())
                {
                    shared.metrics.reject(Reason::RateLimited);
                    return self
                        .reply_error(ErrorCode::RateLimited, "too many TURN credential requests");
                }
                let (ice_servers, ice_ttl_secs) =
                    turn::ice_servers(&shared.config.turn, id.as_str(), SystemTime::now());
                self.link.push(&ServerMsg::IceServers {
                    ice_servers,
                    ice_ttl_secs,
                });
            }
            ClientMsg::Ping { id } => {
                self.link.push(&ServerMsg::Pong { id });
            }
            // A newer proto crate may add client messages before this server handles them.
            _ => self.reply_error(ErrorCode::Malformed, "message not supported by this server"),
        }
    }
}

#[cfg(test)]
mod tests {
    //! Time-driven rules on tokio's paused clock, over an in-memory WebSocket pair.

    use std::time::Duration;

    use skiff_proto::signal::{DeviceId, Nameplate};
    use tokio::io::DuplexStream;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    use super::*;
    use crate::Config;

    async fn pair(shared: &Arc<Shared>) -> WebSocketStream<DuplexStream> {
        let (client, server) = tokio::io::duplex(1 << 20);
        let server =
            WebSocketStream::from_raw_socket(server, Role::Server, Some(shared.ws_config())).await;
        let deadline = Instant::now() + Duration::from_secs(10);
        tokio::spawn(serve_socket(
            shared.clone(),
            server,
            "192.0.2.1".parse().unwrap(),
            deadline,
        ));
        let mut ws = WebSocketStream::from_raw_socket(client, Role::Client, None).await;
        let hello = ClientMsg::Hello {
            version: SIGNAL_VERSION,
            device_id: DeviceId::try_from(format!("d{}", rand::random::<u32>())).unwrap(),
            name: "n".into(),
            space: None,
        };
        ws.send(Message::text(hello.encode())).await.unwrap();
        assert!(matches!(
            next_msg(&mut ws).await,
            Some(ServerMsg::Welcome { .. })
        ));
        assert!(matches!(
            next_msg(&mut ws).await,
            Some(ServerMsg::Peers { .. })
        ));
        ws
    }

    /// The next protocol message; None when the server closed. Reading answers pings.
    async fn next_msg(ws: &mut WebSocketStream<DuplexStream>) -> Option<ServerMsg> {
        loop {
            match ws.next().await? {
                Ok(Message::Text(t)) => return Some(ServerMsg::decode(t.as_str()).unwrap()),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    async fn close_code(ws: &mut WebSocketStream<DuplexStream>) -> Option<u16> {
        loop {
            match ws.next().await? {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn silent_socket_is_closed_after_sixty_seconds_and_a_live_one_is_not() {
        let shared = Arc::new(Shared::new(Config::default()));
        let mut silent = pair(&shared).await;
        let mut live = pair(&shared).await;
        let _joined = next_msg(&mut silent).await;
        // `live` keeps reading (so it answers the server's pings every 20 s); `silent` does not.
        let live_task = tokio::spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(150), next_msg(&mut live)).await;
            (r, live)
        });
        tokio::time::sleep(Duration::from_secs(59)).await;
        assert_eq!(shared.lock_hub().peer_count(), 2);
        tokio::time::sleep(Duration::from_secs(2)).await;
        // The silent one is gone (reading now hits its pings and then the end; answering the
        // pings may already fail, so the close frame itself is not always seen here).
        let end = tokio::time::timeout(Duration::from_secs(1), close_code(&mut silent)).await;
        assert!(matches!(end, Ok(None | Some(close::POLICY))), "{end:?}");
        let (r, _live) = live_task.await.unwrap();
        // `live` heard only that `silent` left, and is still a member.
        assert!(matches!(r, Ok(Some(ServerMsg::PeerLeft { .. }))), "{r:?}");
        assert_eq!(shared.lock_hub().peer_count(), 1);
        assert_eq!(shared.metrics.rejections(Reason::Idle), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn nameplate_waiting_ten_minutes_is_expired_and_freed() {
        let shared = Arc::new(Shared::new(Config::default()));
        tokio::spawn(crate::server::sweeper(shared.clone()));
        let mut a = pair(&shared).await;
        a.send(Message::text(ClientMsg::Allocate.encode()))
            .await
            .unwrap();
        let Some(ServerMsg::Allocated { nameplate }) = next_msg(&mut a).await else {
            panic!()
        };
        assert_eq!(shared.lock_hub().nameplate_count(), 1);
        let start = Instant::now();
        // Reading keeps the socket alive (pongs) while the clock runs to the TTL.
        let msg = tokio::time::timeout(Duration::from_secs(700), next_msg(&mut a))
            .await
            .unwrap();
        assert_eq!(
            msg,
            Some(ServerMsg::NameplateExpired {
                nameplate: nameplate.clone()
            })
        );
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_secs(600) && waited <= Duration::from_secs(602),
            "{waited:?}"
        );
        assert_eq!(shared.lock_hub().nameplate_count(), 0);
        // A claim now fails like any unknown nameplate.
        let mut b = pair(&shared).await;
        let claim = ClientMsg::Claim {
            nameplate: Nameplate::try_from(nameplate.as_str().to_owned()).unwrap(),
        };
        b.send(Message::text(claim.encode())).await.unwrap();
        let _joined = next_msg(&mut a).await;
        assert!(matches!(
            next_msg(&mut b).await,
            Some(ServerMsg::Error {
                code: ErrorCode::NameplateUnavailable,
                ..
            })
        ));
    }
}
