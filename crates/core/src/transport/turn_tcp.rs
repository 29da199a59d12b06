//! TURN TCP relay (RFC 6062): the fallback data path for networks that block UDP.
//!
//! The `webrtc` crate's TURN client only relays UDP and skips `?transport=tcp` / `turns:`
//! URLs, so a peer whose firewall drops UDP would have no path at all. Here the sender
//! ("allocator") holds a TCP allocation on the TURN server — over TCP or TLS, Allocate with
//! `REQUESTED-TRANSPORT = TCP` — and the receiver ("dialer") simply opens a plain TCP
//! connection to the relayed address. The server announces that connection with a
//! ConnectionAttempt; the allocator binds it on a fresh connection to the server
//! (ConnectionBind), after which that socket is a raw byte pipe to the dialer. Skiff's
//! session layer seals every frame on top, so the TURN server only ever sees ciphertext.
//!
//! Once bound, the allocator sends a 16-byte hello ([`HELLO`]) and the dialer answers with
//! the same, so [`dial`] returns only when the allocator really holds the other end (a
//! relayed address can accept TCP that will never be forwarded, and coturn drops bytes a
//! peer sends before the binding), and [`TcpAllocation::accept`] only a connection that
//! speaks Skiff. Frames are then `len: u32 BE ‖ bytes`, as in [`super::tcp`], except that
//! `close` sends an end marker instead of a TCP half-close: coturn tears down both
//! directions of a relayed connection on one FIN.
//!
//! Known coturn limit (4.6.1 up to at least 4.17, `ns_ioalib_engine_impl.c`): its TCP
//! relay's flow control re-enables reading one side after checking the wrong socket's
//! buffer, so a connection whose *both* directions are backlogged past ~128 KiB at once
//! can stall for good. Skiff's bulk runs one way (chunks one way, small credit/acks back),
//! which is safe; do not put two saturating streams on one relayed connection.
//!
//! Owns: the control connection to the TURN server (long-term credentials, nonce renewal
//! on 438, MESSAGE-INTEGRITY and FINGERPRINT), the allocation's and permissions' refresh
//! task, ConnectionBind of each data connection, and the STUN Binding over TCP/TLS that
//! tells a dialer its public address. Everything runs on the allocation's `TaskTracker`
//! under one `CancellationToken`; the allocation stays up while the [`TcpAllocation`] or
//! any [`Conn`] accepted from it is alive, and dropping the last of them stops it (the
//! server then deletes the allocation with its data connections).
//! Must not: trust a certificate outside the web PKI roots and the configured extra roots,
//! accept a STUN message over [`MAX_STUN`] bytes, wait on the network without a timeout,
//! or log a credential.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rtc::stun::attributes::{
    ATTR_CONNECTION_ID, ATTR_FINGERPRINT, ATTR_MAPPED_ADDRESS, ATTR_MESSAGE_INTEGRITY, ATTR_NONCE,
    ATTR_REALM, ATTR_USERNAME,
};
use rtc::stun::crypto::RTCCryptoProvider;
use rtc::stun::error_code::ErrorCodeAttribute;
use rtc::stun::fingerprint::FINGERPRINT;
use rtc::stun::integrity::MessageIntegrity;
use rtc::stun::message::{
    Getter, Message, MessageType, Method, Setter, TransactionId, CLASS_ERROR_RESPONSE,
    CLASS_INDICATION, CLASS_REQUEST, CLASS_SUCCESS_RESPONSE, MAGIC_COOKIE, MESSAGE_HEADER_SIZE,
    METHOD_ALLOCATE, METHOD_BINDING, METHOD_CONNECTION_ATTEMPT, METHOD_CONNECTION_BIND,
    METHOD_CREATE_PERMISSION, METHOD_REFRESH,
};
use rtc::stun::textattrs::TextAttribute;
use rtc::stun::xoraddr::XorMappedAddress;
use rtc::turn::proto::lifetime::Lifetime;
use rtc::turn::proto::peeraddr::PeerAddress;
use rtc::turn::proto::relayaddr::RelayedAddress;
use rtc::turn::proto::reqtrans::RequestedTransport;
use rtc::turn::proto::PROTO_TCP;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::{tcp, Conn, FrameSink, FrameStream, PathKind};
use crate::{Error, Result};

/// Largest STUN message accepted from a TURN server (header included). coturn's are a few
/// hundred bytes.
pub const MAX_STUN: usize = 4096;
/// Sent by each end of a bound relayed connection before its first frame.
pub const HELLO: &[u8; 16] = b"skiff-turn-tcp/1";
/// TCP connect to the TURN server or to a relayed address.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshake with the TURN server.
const TLS_TIMEOUT: Duration = Duration::from_secs(10);
/// One STUN request/response over TCP (reliable: sent once, RFC 5389 §7.2.2).
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(10);
/// The dialer's wait for the allocator's hello. coturn drops a connection nobody bound
/// after 30 s (RFC 6062 §5.3), so waiting longer is pointless.
pub const BIND_TIMEOUT: Duration = Duration::from_secs(30);
/// The allocator's wait for the dialer's hello, answered to its own once bound.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Requested allocation lifetime; the server may grant less.
const REQUESTED_LIFETIME: Duration = Duration::from_secs(600);
/// Refresh period bounds: a third of the granted lifetime, within these. The upper bound
/// keeps permissions (300 s on coturn, not announced to the client) alive too.
const MIN_REFRESH: Duration = Duration::from_secs(2);
const MAX_REFRESH: Duration = Duration::from_secs(100);
/// Most peer IPs one allocation permits.
const MAX_PERMITS: usize = 16;
/// Most STUN transactions in flight on the control connection.
const MAX_PENDING: usize = 32;
/// ConnectionAttempts waiting for `accept`; more are dropped (the server times them out).
const ATTEMPT_QUEUE: usize = 8;
/// Request rounds: unauthenticated → 401 (realm, nonce) → authenticated, plus one more for
/// a new or stale nonce (438, or 401 on a fresh data connection).
const AUTH_ROUNDS: usize = 3;

/// A TURN server reached over TCP or TLS, with its (ephemeral) long-term credentials.
#[derive(Clone)]
pub struct TurnServer {
    /// `turn:host[:port]?transport=tcp` (default port 3478) or `turns:host[:port]`
    /// (default 5349).
    pub url: String,
    pub username: String,
    pub credential: String,
    /// Extra trust anchors (PEM certificates) for `turns:`, on top of the web PKI roots:
    /// for a lab or test server with its own certificate. Verification is never skipped.
    pub extra_roots_pem: Option<String>,
}

impl fmt::Debug for TurnServer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnServer")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("extra_roots_pem", &self.extra_roots_pem.is_some())
            .finish_non_exhaustive()
    }
}

impl TurnServer {
    pub fn new(
        url: impl Into<String>,
        username: impl Into<String>,
        credential: impl Into<String>,
    ) -> Self {
        TurnServer {
            url: url.into(),
            username: username.into(),
            credential: credential.into(),
            extra_roots_pem: None,
        }
    }

    /// The TCP and TLS TURN entries (`?transport=tcp`, `turns:`) of a signaling server's
    /// ICE server list, TLS first (it also passes firewalls that only allow TLS).
    pub fn from_ice(servers: &[skiff_proto::signal::IceServer]) -> Vec<TurnServer> {
        let mut out: Vec<TurnServer> = Vec::new();
        for s in servers {
            let (Some(user), Some(cred)) = (&s.username, &s.credential) else {
                continue;
            };
            for url in &s.urls {
                if let Ok(ep) = Endpoint::parse(url) {
                    let server = TurnServer::new(url.clone(), user.clone(), cred.clone());
                    if ep.tls {
                        out.insert(0, server);
                    } else {
                        out.push(server);
                    }
                }
            }
        }
        out
    }
}

/// A parsed TCP/TLS TURN URL.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Endpoint {
    tls: bool,
    host: String,
    port: u16,
}

impl Endpoint {
    fn parse(url: &str) -> Result<Endpoint> {
        let bad = |why: &str| Error::InvalidInput {
            reason: format!("TURN URL {url:?}: {why}"),
        };
        let (tls, rest) = if let Some(r) = url.strip_prefix("turns:") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("turn:") {
            (false, r)
        } else {
            return Err(bad("not a turn: or turns: URL"));
        };
        let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut transport = None;
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            match kv.split_once('=') {
                Some(("transport", t)) => transport = Some(t.to_ascii_lowercase()),
                _ => return Err(bad("unknown URL parameter")),
            }
        }
        match (tls, transport.as_deref()) {
            (_, Some("tcp")) | (true, None) => {}
            (false, None) | (_, Some("udp")) => {
                return Err(bad(
                    "TURN over UDP; the TCP relay needs ?transport=tcp or turns:",
                ))
            }
            _ => return Err(bad("unknown transport")),
        }
        let default_port = if tls { 5349 } else { 3478 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            match after {
                "" => (h, default_port),
                p => (
                    h,
                    p.strip_prefix(':')
                        .and_then(|p| p.parse().ok())
                        .ok_or_else(|| bad("bad port"))?,
                ),
            }
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, p.parse().map_err(|_| bad("bad port"))?),
                None => (hostport, default_port),
            }
        };
        if host.is_empty() || port == 0 {
            return Err(bad("no host or port"));
        }
        Ok(Endpoint {
            tls,
            host: host.to_owned(),
            port,
        })
    }
}

// ------------------------------------------------------------------ byte streams

trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}
type BoxIo = Box<dyn Io>;

/// Where to reach one TURN server, resolved once so that every data connection goes to
/// the server that holds the allocation.
struct Target {
    addr: SocketAddr,
    tls: Option<(TlsConnector, ServerName<'static>)>,
}

impl Target {
    async fn resolve(server: &TurnServer) -> Result<(Target, Endpoint)> {
        let ep = Endpoint::parse(&server.url)?;
        let host = (ep.host.as_str(), ep.port);
        let addr = within(CONNECT_TIMEOUT, "resolving the TURN server", async {
            tokio::net::lookup_host(host)
                .await
                .map_err(|e| Error::io(format!("resolving TURN server {}", ep.host), e))?
                .next()
                .ok_or_else(|| Error::InvalidInput {
                    reason: format!("TURN server {} has no address", ep.host),
                })
        })
        .await?;
        let tls = if ep.tls {
            let name = ServerName::try_from(ep.host.clone()).map_err(|_| Error::InvalidInput {
                reason: format!("{:?} is not a valid TLS server name", ep.host),
            })?;
            Some((tls_connector(server.extra_roots_pem.as_deref())?, name))
        } else {
            None
        };
        Ok((Target { addr, tls }, ep))
    }

    fn path(&self) -> PathKind {
        if self.tls.is_some() {
            PathKind::TurnTls
        } else {
            PathKind::TurnTcp
        }
    }

    async fn connect(&self) -> Result<BoxIo> {
        let addr = self.addr;
        let tcp = within(
            CONNECT_TIMEOUT,
            "connecting to the TURN server",
            async move {
                TcpStream::connect(addr)
                    .await
                    .map_err(|e| Error::io(format!("connecting to TURN server {addr}"), e))
            },
        )
        .await?;
        let _ = tcp.set_nodelay(true);
        let Some((connector, name)) = &self.tls else {
            return Ok(Box::new(tcp));
        };
        let tls = within(
            TLS_TIMEOUT,
            "in the TLS handshake with the TURN server",
            async {
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| Error::io(format!("TLS with TURN server {addr}"), e))
            },
        )
        .await?;
        Ok(Box::new(tls))
    }
}

fn tls_connector(extra_roots_pem: Option<&str>) -> Result<TlsConnector> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(pem) = extra_roots_pem {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| Error::InvalidInput {
                reason: format!("extra TURN root certificate: {e}"),
            })?;
            roots.add(cert).map_err(|e| Error::InvalidInput {
                reason: format!("extra TURN root certificate: {e}"),
            })?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::InvalidInput {
                reason: "extra TURN root certificates: no PEM certificate found".into(),
            });
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    // TLS 1.2 stays allowed: coturn 4.6.1 has no TLS 1.3.
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidInput {
            reason: format!("TLS configuration: {e}"),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

async fn within<T>(
    limit: Duration,
    what: &'static str,
    f: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    tokio::time::timeout(limit, f)
        .await
        .map_err(|_| Error::Timeout { what })?
}

// ------------------------------------------------------------------ STUN messages

fn stun_err(context: &str, e: impl fmt::Display) -> Error {
    Error::protocol(format!("TURN: {context}: {e}"))
}

/// Reads exactly one STUN message (nothing past it: on a data connection, what follows
/// the ConnectionBind response is the peer's bytes).
async fn read_msg<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> Result<Message> {
    let mut header = [0u8; MESSAGE_HEADER_SIZE];
    r.read_exact(&mut header)
        .await
        .map_err(|e| Error::io("reading from the TURN server", e))?;
    let len = u16::from_be_bytes([header[2], header[3]]) as usize;
    let cookie = u32::from_be_bytes([header[4], header[5], header[6], header[7]]);
    if header[0] & 0xc0 != 0 || cookie != MAGIC_COOKIE || len % 4 != 0 {
        return Err(Error::protocol(
            "TURN server sent something that is not STUN",
        ));
    }
    if MESSAGE_HEADER_SIZE + len > MAX_STUN {
        return Err(Error::protocol(format!(
            "TURN server sent a STUN message of {} bytes (limit {MAX_STUN})",
            MESSAGE_HEADER_SIZE + len
        )));
    }
    let mut raw = Vec::with_capacity(MESSAGE_HEADER_SIZE + len);
    raw.extend_from_slice(&header);
    raw.resize(MESSAGE_HEADER_SIZE + len, 0);
    r.read_exact(&mut raw[MESSAGE_HEADER_SIZE..])
        .await
        .map_err(|e| Error::io("reading from the TURN server", e))?;
    let mut m = Message::new();
    m.unmarshal_binary(&raw)
        .map_err(|e| stun_err("undecodable message", e))?;
    if m.contains(ATTR_FINGERPRINT) {
        FINGERPRINT
            .check(&m)
            .map_err(|e| stun_err("bad FINGERPRINT", e))?;
    }
    Ok(m)
}

async fn write_msg<W: AsyncWrite + Unpin + ?Sized>(w: &mut W, m: &Message) -> Result<()> {
    w.write_all(&m.raw)
        .await
        .map_err(|e| Error::io("writing to the TURN server", e))?;
    w.flush()
        .await
        .map_err(|e| Error::io("writing to the TURN server", e))
}

/// `CONNECTION-ID` (RFC 6062 §6.2.1).
struct ConnectionId(u32);

impl Setter for ConnectionId {
    fn add_to(&self, m: &mut Message) -> rtc::shared::error::Result<()> {
        m.add(ATTR_CONNECTION_ID, &self.0.to_be_bytes());
        Ok(())
    }
}

fn connection_id(m: &Message) -> Result<u32> {
    let v = m
        .get(ATTR_CONNECTION_ID)
        .map_err(|e| stun_err("ConnectionAttempt without CONNECTION-ID", e))?;
    let b: [u8; 4] = v
        .as_slice()
        .try_into()
        .map_err(|_| Error::protocol("TURN: CONNECTION-ID is not 4 bytes"))?;
    Ok(u32::from_be_bytes(b))
}

/// The attributes a request carries besides authentication.
enum Attr {
    Transport,
    Lifetime(Duration),
    Peer(IpAddr),
    ConnectionId(u32),
}

/// Long-term credentials (RFC 5389 §10.2) and the realm/nonce the server gave us.
struct Creds {
    crypto: Arc<dyn RTCCryptoProvider>,
    username: String,
    password: String,
}

#[derive(Clone, Default)]
struct AuthState {
    realm: String,
    nonce: String,
    key: Vec<u8>,
}

impl Creds {
    fn new(server: &TurnServer) -> Result<Creds> {
        let crypto =
            rtc::stun::crypto::default_provider().map_err(|e| stun_err("no crypto provider", e))?;
        Ok(Creds {
            crypto,
            username: server.username.clone(),
            password: server.credential.clone(),
        })
    }

    fn key(&self, realm: &str) -> Result<Vec<u8>> {
        MessageIntegrity::long_term_integrity_key(
            self.username.clone(),
            realm.to_owned(),
            self.password.clone(),
            self.crypto.crypto(),
        )
        .map_err(|e| stun_err("long-term key", e))
    }

    fn build(&self, method: Method, attrs: &[Attr], auth: Option<&AuthState>) -> Result<Message> {
        let mut setters: Vec<Box<dyn Setter + '_>> = vec![
            Box::new(TransactionId::new()),
            Box::new(MessageType::new(method, CLASS_REQUEST)),
        ];
        for a in attrs {
            setters.push(match a {
                Attr::Transport => Box::new(RequestedTransport {
                    protocol: PROTO_TCP,
                }),
                Attr::Lifetime(d) => Box::new(Lifetime(*d)),
                Attr::Peer(ip) => Box::new(PeerAddress { ip: *ip, port: 0 }),
                Attr::ConnectionId(id) => Box::new(ConnectionId(*id)),
            });
        }
        if let Some(a) = auth {
            setters.push(Box::new(TextAttribute::new(
                ATTR_USERNAME,
                self.username.clone(),
            )));
            setters.push(Box::new(TextAttribute::new(ATTR_REALM, a.realm.clone())));
            setters.push(Box::new(TextAttribute::new(ATTR_NONCE, a.nonce.clone())));
            setters.push(Box::new(MessageIntegrity::new_raw_integrity_with_provider(
                a.key.clone(),
                self.crypto.crypto(),
            )));
        }
        setters.push(Box::new(FINGERPRINT));
        let mut m = Message::new();
        m.build(&setters)
            .map_err(|e| stun_err("cannot encode request", e))?;
        Ok(m)
    }
}

/// One request/response round trip on some connection to the server.
trait Exchange {
    async fn exchange(&mut self, req: &Message) -> Result<Message>;
}

/// A connection used for one transaction at a time (Binding, ConnectionBind).
struct Direct<'a>(&'a mut BoxIo);

impl Exchange for Direct<'_> {
    async fn exchange(&mut self, req: &Message) -> Result<Message> {
        within(
            TRANSACTION_TIMEOUT,
            "waiting for the TURN server's answer",
            async {
                write_msg(self.0, req).await?;
                loop {
                    let m = read_msg(self.0).await?;
                    if m.transaction_id == req.transaction_id {
                        return Ok(m);
                    }
                }
            },
        )
        .await
    }
}

/// Sends `method` with long-term authentication: learns realm and nonce from the first
/// 401, renews the nonce on 438 (or a 401 carrying a new one), and maps any other error
/// response to [`Error::TurnRefused`].
async fn request(
    ex: &mut impl Exchange,
    creds: &Creds,
    auth: &Mutex<AuthState>,
    method: Method,
    attrs: &[Attr],
    what: &'static str,
) -> Result<Message> {
    let mut authed_401 = 0;
    let mut last = None;
    for _ in 0..AUTH_ROUNDS {
        let state = lock(auth).clone();
        let authed = !state.nonce.is_empty();
        let req = creds.build(method, attrs, authed.then_some(&state))?;
        let mut resp = ex.exchange(&req).await?;
        if resp.typ.method != method {
            return Err(Error::protocol(format!(
                "TURN: answer to {what} has the wrong method"
            )));
        }
        match resp.typ.class {
            CLASS_SUCCESS_RESPONSE => {
                if authed && resp.contains(ATTR_MESSAGE_INTEGRITY) {
                    MessageIntegrity::check(&mut resp, &state.key, creds.crypto.crypto())
                        .map_err(|e| stun_err("response failed MESSAGE-INTEGRITY", e))?;
                }
                return Ok(resp);
            }
            CLASS_ERROR_RESPONSE => {
                let (code, reason) = error_code(&resp);
                let nonce = TextAttribute::get_from_as(&resp, ATTR_NONCE).ok();
                if code == 401 && authed {
                    authed_401 += 1;
                }
                match (code, nonce) {
                    (401 | 438, Some(nonce)) if authed_401 < 2 => {
                        let mut a = lock(auth);
                        if let Ok(realm) = TextAttribute::get_from_as(&resp, ATTR_REALM) {
                            if realm.text != a.realm || a.key.is_empty() {
                                a.key = creds.key(&realm.text)?;
                                a.realm = realm.text;
                            }
                        }
                        if a.key.is_empty() {
                            return Err(Error::protocol("TURN: 401 without a REALM"));
                        }
                        a.nonce = nonce.text;
                        last = Some((code, reason));
                    }
                    (code, _) => return Err(refused(what, code, reason)),
                }
            }
            _ => return Err(Error::protocol(format!("TURN: bad answer to {what}"))),
        }
    }
    let (code, reason) = last.unwrap_or((401, String::new()));
    Err(refused(what, code, reason))
}

fn refused(what: &'static str, code: u16, reason: String) -> Error {
    let reason = match code {
        401 => format!("{reason} (wrong or expired credentials)"),
        _ => reason,
    };
    Error::TurnRefused { what, code, reason }
}

fn error_code(m: &Message) -> (u16, String) {
    let mut e = ErrorCodeAttribute::default();
    if e.get_from(m).is_err() {
        return (0, "error response without ERROR-CODE".into());
    }
    let reason: String = String::from_utf8_lossy(&e.reason)
        .chars()
        .filter(|c| !c.is_control())
        .take(120)
        .collect();
    (e.code.0, reason.trim().to_owned())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn relayed_of(m: &Message) -> Option<SocketAddr> {
    let mut a = RelayedAddress::default();
    a.get_from(m).ok()?;
    Some(SocketAddr::new(a.ip, a.port))
}

fn mapped_of(m: &Message) -> Option<SocketAddr> {
    let mut a = XorMappedAddress::default();
    if a.get_from(m).is_ok() {
        return Some(SocketAddr::new(a.ip, a.port));
    }
    // Plain MAPPED-ADDRESS from an RFC 3489 server: same layout without the XOR.
    let v = m.get(ATTR_MAPPED_ADDRESS).ok()?;
    let port = u16::from_be_bytes([*v.get(2)?, *v.get(3)?]);
    let ip = match (v.get(1)?, v.len()) {
        (1, 8) => IpAddr::from(<[u8; 4]>::try_from(&v[4..8]).ok()?),
        (2, 20) => IpAddr::from(<[u8; 16]>::try_from(&v[4..20]).ok()?),
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn peer_of(m: &Message) -> Option<SocketAddr> {
    let mut a = PeerAddress::default();
    a.get_from(m).ok()?;
    Some(SocketAddr::new(a.ip, a.port))
}

// ------------------------------------------------------------------ public address

/// This host's public address as the TURN server sees it (STUN Binding over TCP or TLS,
/// no credentials needed). The dialer sends the IP to the allocator, which permits it.
pub async fn public_addr(server: &TurnServer) -> Result<SocketAddr> {
    let (target, _) = Target::resolve(server).await?;
    let mut io = target.connect().await?;
    let mut req = Message::new();
    req.build(&[
        Box::new(TransactionId::new()),
        Box::new(MessageType::new(METHOD_BINDING, CLASS_REQUEST)),
        Box::new(FINGERPRINT),
    ])
    .map_err(|e| stun_err("cannot encode Binding", e))?;
    let resp = Direct(&mut io).exchange(&req).await?;
    if resp.typ.class != CLASS_SUCCESS_RESPONSE {
        let (code, reason) = error_code(&resp);
        return Err(refused("binding request", code, reason));
    }
    mapped_of(&resp)
        .ok_or_else(|| Error::protocol("TURN: Binding answer without XOR-MAPPED-ADDRESS"))
}

// ------------------------------------------------------------------ allocation

/// State shared by the allocation's handle, its tasks, and the transactions.
struct Control {
    creds: Creds,
    auth: Mutex<AuthState>,
    target: Target,
    server: String,
    writer: tokio::sync::Mutex<WriteHalf<BoxIo>>,
    /// Transactions waiting for their answer; `None` once the control connection is gone.
    pending: Mutex<Option<HashMap<TransactionId, oneshot::Sender<Message>>>>,
    permits: Mutex<Vec<IpAddr>>,
}

impl Exchange for &Control {
    async fn exchange(&mut self, req: &Message) -> Result<Message> {
        let (tx, rx) = oneshot::channel();
        let tid = req.transaction_id;
        {
            let mut pending = lock(&self.pending);
            let map = pending.as_mut().ok_or(Error::ConnectionClosed)?;
            if map.len() >= MAX_PENDING {
                return Err(Error::protocol("TURN: too many requests in flight"));
            }
            map.insert(tid, tx);
        }
        let res = within(
            TRANSACTION_TIMEOUT,
            "waiting for the TURN server's answer",
            async {
                write_msg(&mut *self.writer.lock().await, req).await?;
                rx.await.map_err(|_| Error::ConnectionClosed)
            },
        )
        .await;
        if res.is_err() {
            if let Some(map) = lock(&self.pending).as_mut() {
                map.remove(&tid);
            }
        }
        res
    }
}

impl Control {
    async fn request(&self, method: Method, attrs: &[Attr], what: &'static str) -> Result<Message> {
        let mut ex = self;
        request(&mut ex, &self.creds, &self.auth, method, attrs, what).await
    }
}

/// Stops the allocation's tasks when the last holder (the allocation or a `Conn`) goes.
struct Lifeline(CancellationToken);

impl Drop for Lifeline {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

/// A ConnectionAttempt: the server holds a TCP connection from `peer` under `id`.
struct Attempt {
    id: u32,
    peer: SocketAddr,
}

/// An RFC 6062 TCP allocation on a TURN server, held over one control connection.
pub struct TcpAllocation {
    control: Arc<Control>,
    lifeline: Arc<Lifeline>,
    tasks: TaskTracker,
    attempts: tokio::sync::Mutex<mpsc::Receiver<Attempt>>,
    relayed: SocketAddr,
    mapped: Option<SocketAddr>,
    lifetime: Duration,
}

impl fmt::Debug for TcpAllocation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpAllocation")
            .field("server", &self.control.server)
            .field("relayed", &self.relayed)
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

impl TcpAllocation {
    /// Connects to `server` (TCP or TLS), allocates a TCP relay, and starts keeping it
    /// alive. Fails with [`Error::TurnRefused`] when the server says no (e.g. 401 for bad
    /// credentials, 442 when it does not relay TCP).
    pub async fn allocate(server: &TurnServer) -> Result<TcpAllocation> {
        let (target, _) = Target::resolve(server).await?;
        let io = target.connect().await?;
        let (reader, writer) = tokio::io::split(io);
        let control = Arc::new(Control {
            creds: Creds::new(server)?,
            auth: Mutex::new(AuthState::default()),
            server: target.addr.to_string(),
            target,
            writer: tokio::sync::Mutex::new(writer),
            pending: Mutex::new(Some(HashMap::new())),
            permits: Mutex::new(Vec::new()),
        });
        let cancel = CancellationToken::new();
        let lifeline = Arc::new(Lifeline(cancel.clone()));
        let tasks = TaskTracker::new();
        let (attempt_tx, attempt_rx) = mpsc::channel(ATTEMPT_QUEUE);
        tasks.spawn(read_control(
            reader,
            Arc::clone(&control),
            attempt_tx,
            cancel.clone(),
        ));
        let resp = control
            .request(
                METHOD_ALLOCATE,
                &[Attr::Transport, Attr::Lifetime(REQUESTED_LIFETIME)],
                "allocation",
            )
            .await?;
        let relayed = relayed_of(&resp)
            .ok_or_else(|| Error::protocol("TURN: allocation without XOR-RELAYED-ADDRESS"))?;
        let mut lifetime = Lifetime::default();
        lifetime
            .get_from(&resp)
            .map_err(|e| stun_err("allocation without LIFETIME", e))?;
        if lifetime.0.is_zero() {
            return Err(Error::protocol("TURN: allocation with zero LIFETIME"));
        }
        let period = (lifetime.0 / 3).clamp(MIN_REFRESH, MAX_REFRESH);
        tasks.spawn(refresh(Arc::clone(&control), period, cancel.clone()));
        tasks.close();
        tracing::info!(
            "turn-tcp: allocated {relayed} on {} (lifetime {:?}, refresh every {period:?})",
            control.server,
            lifetime.0
        );
        Ok(TcpAllocation {
            control,
            lifeline,
            tasks,
            attempts: tokio::sync::Mutex::new(attempt_rx),
            relayed,
            mapped: mapped_of(&resp),
            lifetime: lifetime.0,
        })
    }

    /// The relayed transport address on the TURN server: what the dialer connects to.
    pub fn relayed_addr(&self) -> SocketAddr {
        self.relayed
    }

    /// This host's address as the TURN server sees it (XOR-MAPPED-ADDRESS), if it said.
    pub fn mapped_addr(&self) -> Option<SocketAddr> {
        self.mapped
    }

    /// The allocation lifetime the server granted (refreshed at a third of it).
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The allocation's tasks (control reader, refresher): empty once it has stopped.
    pub fn tasks(&self) -> TaskTracker {
        self.tasks.clone()
    }

    /// Lets TCP connections from `peer_ip` (any port) reach the relayed address, and
    /// keeps that permission refreshed.
    pub async fn permit(&self, peer_ip: IpAddr) -> Result<()> {
        {
            let permits = lock(&self.control.permits);
            if !permits.contains(&peer_ip) && permits.len() >= MAX_PERMITS {
                return Err(Error::InvalidInput {
                    reason: format!("a TURN allocation permits at most {MAX_PERMITS} peers"),
                });
            }
        }
        self.control
            .request(
                METHOD_CREATE_PERMISSION,
                &[Attr::Peer(peer_ip)],
                "permission",
            )
            .await?;
        let mut permits = lock(&self.control.permits);
        if !permits.contains(&peer_ip) {
            permits.push(peer_ip);
        }
        Ok(())
    }

    /// Waits for a permitted peer to connect to the relayed address, binds that
    /// connection and returns it once the dialer's hello arrived. Waits for as long as it
    /// takes (the caller bounds it); a single attempt that fails to bind is logged and
    /// skipped. Errors when the allocation is gone.
    pub async fn accept(&self) -> Result<Conn> {
        let mut attempts = self.attempts.lock().await;
        loop {
            let Some(attempt) = attempts.recv().await else {
                return Err(Error::Io {
                    context: format!(
                        "the TURN allocation on {} ended (control connection closed)",
                        self.control.server
                    ),
                    source: io::Error::from(io::ErrorKind::ConnectionAborted),
                });
            };
            if !lock(&self.control.permits).contains(&attempt.peer.ip()) {
                tracing::warn!(
                    "turn-tcp: ignoring a connection from unpermitted {}",
                    attempt.peer
                );
                continue;
            }
            match self.bind(&attempt).await {
                Ok(conn) => return Ok(conn),
                Err(e) => {
                    tracing::warn!("turn-tcp: connection from {} not bound: {e}", attempt.peer)
                }
            }
        }
    }

    async fn bind(&self, attempt: &Attempt) -> Result<Conn> {
        let control = &self.control;
        let mut io = control.target.connect().await?;
        // A data connection is a new session to the server: it may want its own nonce.
        let auth = Mutex::new(lock(&control.auth).clone());
        request(
            &mut Direct(&mut io),
            &control.creds,
            &auth,
            METHOD_CONNECTION_BIND,
            &[Attr::ConnectionId(attempt.id)],
            "connection bind",
        )
        .await?;
        // The dialer speaks only after our hello (see `dial`).
        within(HELLO_TIMEOUT, "exchanging hellos with the peer", async {
            io.write_all(HELLO)
                .await
                .map_err(|e| Error::io("writing to the peer via TURN", e))?;
            io.flush()
                .await
                .map_err(|e| Error::io("writing to the peer via TURN", e))?;
            read_hello(&mut io).await
        })
        .await?;
        let path = control.target.path();
        tracing::info!(
            "turn-tcp: {} bound via {} ({})",
            attempt.peer,
            control.server,
            path.as_str()
        );
        let (r, w) = tokio::io::split(io);
        let (sink, stream) = tcp::framed(r, w, tcp::End::Marker);
        Ok(Conn {
            sink: Box::new(Held {
                inner: sink,
                _life: Arc::clone(&self.lifeline),
            }),
            stream: Box::new(Held {
                inner: stream,
                _life: Arc::clone(&self.lifeline),
            }),
            path,
            remote: format!("{} via TURN {}", attempt.peer, control.server),
        })
    }
}

const NOT_PERMITTED: &str = "(no TURN permission for this address, or the allocation is gone)";

/// How a TURN server turns away a connection to a relayed address it will not forward.
fn turned_away(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
    )
}

async fn read_hello<R: AsyncRead + Unpin + ?Sized>(r: &mut R) -> Result<()> {
    let mut got = [0u8; HELLO.len()];
    r.read_exact(&mut got).await.map_err(|e| {
        if turned_away(&e) {
            Error::Io {
                context: format!(
                    "the relayed connection closed before the peer's hello {NOT_PERMITTED}"
                ),
                source: e,
            }
        } else {
            Error::io("reading the peer's hello via TURN", e)
        }
    })?;
    if &got != HELLO {
        return Err(Error::protocol(
            "the relayed connection does not speak Skiff (bad hello)",
        ));
    }
    Ok(())
}

/// Reads the control connection: answers go to their transaction, ConnectionAttempts to
/// `accept`. Ends on cancel, EOF or a protocol error, failing everything still pending.
async fn read_control(
    mut reader: tokio::io::ReadHalf<BoxIo>,
    control: Arc<Control>,
    attempts: mpsc::Sender<Attempt>,
    cancel: CancellationToken,
) {
    loop {
        let m = tokio::select! {
            _ = cancel.cancelled() => break,
            m = read_msg(&mut reader) => m,
        };
        let m = match m {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(
                    "turn-tcp: control connection to {} ended: {e}",
                    control.server
                );
                break;
            }
        };
        match m.typ.class {
            CLASS_SUCCESS_RESPONSE | CLASS_ERROR_RESPONSE => {
                let tx = lock(&control.pending)
                    .as_mut()
                    .and_then(|p| p.remove(&m.transaction_id));
                match tx {
                    Some(tx) => {
                        let _ = tx.send(m);
                    }
                    None => tracing::debug!("turn-tcp: answer to no pending request"),
                }
            }
            CLASS_INDICATION if m.typ.method == METHOD_CONNECTION_ATTEMPT => {
                let attempt = connection_id(&m).and_then(|id| {
                    let peer = peer_of(&m).ok_or_else(|| {
                        Error::protocol("TURN: ConnectionAttempt without XOR-PEER-ADDRESS")
                    })?;
                    Ok(Attempt { id, peer })
                });
                match attempt {
                    Ok(a) => {
                        tracing::debug!("turn-tcp: connection attempt from {}", a.peer);
                        if attempts.try_send(a).is_err() {
                            tracing::warn!(
                                "turn-tcp: too many unaccepted connections; dropping one"
                            );
                        }
                    }
                    Err(e) => tracing::warn!("turn-tcp: {e}"),
                }
            }
            _ => tracing::debug!("turn-tcp: ignoring a {}", m.typ),
        }
    }
    // Dropping the senders fails every waiting transaction with ConnectionClosed.
    lock(&control.pending).take();
    cancel.cancel();
}

/// Refreshes the allocation and the permissions every `period` until cancelled.
async fn refresh(control: Arc<Control>, period: Duration, cancel: CancellationToken) {
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
        let mut ok = control
            .request(
                METHOD_REFRESH,
                &[Attr::Lifetime(REQUESTED_LIFETIME)],
                "refresh",
            )
            .await
            .map_err(|e| tracing::warn!("turn-tcp: refresh on {} failed: {e}", control.server))
            .is_ok();
        let peers: Vec<Attr> = lock(&control.permits)
            .iter()
            .map(|ip| Attr::Peer(*ip))
            .collect();
        if !peers.is_empty() {
            ok &= control
                .request(METHOD_CREATE_PERMISSION, &peers, "permission refresh")
                .await
                .map_err(|e| {
                    tracing::warn!(
                        "turn-tcp: permission refresh on {} failed: {e}",
                        control.server
                    )
                })
                .is_ok();
        }
        failures = if ok { 0 } else { failures + 1 };
        if failures >= 3 {
            tracing::warn!("turn-tcp: giving up the allocation on {}", control.server);
            cancel.cancel();
            return;
        }
    }
}

/// Keeps the allocation alive for as long as a connection accepted from it is.
struct Held<T> {
    inner: T,
    _life: Arc<Lifeline>,
}

#[async_trait]
impl FrameSink for Held<Box<dyn FrameSink>> {
    async fn send(&mut self, frame: Vec<u8>) -> Result<()> {
        self.inner.send(frame).await
    }
    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}

#[async_trait]
impl FrameStream for Held<Box<dyn FrameStream>> {
    async fn recv(&mut self, max: usize) -> Result<Option<Vec<u8>>> {
        self.inner.recv(max).await
    }
}

// ------------------------------------------------------------------ dialer

/// The dialer's side: a plain TCP connection to the allocator's relayed address. Returns
/// once the allocator has bound it and its hello arrived (at most [`BIND_TIMEOUT`]); fails
/// fast when the server refuses the connection (no permission for this host's address).
pub async fn dial(relayed: SocketAddr) -> Result<Conn> {
    let mut stream = within(CONNECT_TIMEOUT, "connecting to the TURN relay", async {
        TcpStream::connect(relayed).await.map_err(|e| {
            let context = if turned_away(&e) {
                format!("TURN relay {relayed} refused the connection {NOT_PERMITTED}")
            } else {
                format!("connecting to TURN relay {relayed}")
            };
            Error::Io { context, source: e }
        })
    })
    .await?;
    let _ = stream.set_nodelay(true);
    // coturn drops what a peer sends before the connection is bound (coturn#495): speak
    // only after the allocator's hello proved the binding.
    within(
        BIND_TIMEOUT,
        "waiting for the peer to accept the relayed TCP connection",
        read_hello(&mut stream),
    )
    .await?;
    stream
        .write_all(HELLO)
        .await
        .map_err(|e| Error::io("writing to the TURN relay", e))?;
    let (r, w) = stream.into_split();
    let (sink, stream) = tcp::framed(r, w, tcp::End::Marker);
    Ok(Conn {
        sink,
        stream,
        path: PathKind::TurnTcp,
        remote: format!("TURN relay {relayed}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_udp_is_refused() {
        let p = |u: &str| Endpoint::parse(u);
        assert_eq!(
            p("turn:203.0.113.10?transport=tcp").unwrap(),
            Endpoint {
                tls: false,
                host: "203.0.113.10".into(),
                port: 3478
            }
        );
        assert_eq!(
            p("turns:turn.example.org").unwrap(),
            Endpoint {
                tls: true,
                host: "turn.example.org".into(),
                port: 5349
            }
        );
        assert_eq!(
            p("turns:[::1]:443?transport=tcp").unwrap(),
            Endpoint {
                tls: true,
                host: "::1".into(),
                port: 443
            }
        );
        assert_eq!(p("turn:h:1?transport=TCP").unwrap().port, 1);
        for bad in [
            "turn:h:3478",
            "turn:h:3478?transport=udp",
            "turns:h?transport=udp",
            "stun:h:3478",
            "turn::3478?transport=tcp",
            "turn:h:0?transport=tcp",
            "turn:h:x?transport=tcp",
            "turn:[::1?transport=tcp",
            "turn:h?transport=tcp&x=1",
        ] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn from_ice_keeps_tcp_and_tls_entries_with_credentials() {
        use skiff_proto::signal::IceServer;
        let ice = vec![
            IceServer {
                urls: vec!["stun:h:3478".into()],
                username: None,
                credential: None,
            },
            IceServer {
                urls: vec![
                    "turn:h:3478?transport=udp".into(),
                    "turn:h:3478?transport=tcp".into(),
                    "turns:h:5349".into(),
                ],
                username: Some("1:u".into()),
                credential: Some("pw".into()),
            },
        ];
        let got = TurnServer::from_ice(&ice);
        let urls: Vec<&str> = got.iter().map(|s| s.url.as_str()).collect();
        assert_eq!(urls, ["turns:h:5349", "turn:h:3478?transport=tcp"]);
        assert!(got
            .iter()
            .all(|s| s.username == "1:u" && s.credential == "pw"));
        assert!(
            !format!("{:?}", got[0]).contains("pw"),
            "credential in Debug"
        );
    }

    #[tokio::test]
    async fn oversized_and_non_stun_messages_are_refused() {
        let mut big = vec![0x01, 0x01, 0x10, 0x00];
        big.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        big.extend_from_slice(&[0; 12]);
        let e = read_msg(&mut big.as_slice()).await.unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        let http = b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec();
        assert!(read_msg(&mut http.as_slice()).await.is_err());
    }

    #[test]
    fn requests_round_trip_with_integrity_and_fingerprint() {
        let creds = Creds::new(&TurnServer::new("turn:h?transport=tcp", "u", "p")).unwrap();
        let key = creds.key("r").unwrap();
        let auth = AuthState {
            realm: "r".into(),
            nonce: "n".into(),
            key: key.clone(),
        };
        let m = creds
            .build(
                METHOD_CONNECTION_BIND,
                &[Attr::ConnectionId(0xdead_beef)],
                Some(&auth),
            )
            .unwrap();
        let mut back = Message::new();
        back.unmarshal_binary(&m.raw).unwrap();
        FINGERPRINT.check(&back).unwrap();
        MessageIntegrity::check(&mut back, &key, creds.crypto.crypto()).unwrap();
        assert_eq!(connection_id(&back).unwrap(), 0xdead_beef);
        assert_eq!(
            TextAttribute::get_from_as(&back, ATTR_USERNAME)
                .unwrap()
                .text,
            "u"
        );
        let wrong = creds.key("other").unwrap();
        assert!(MessageIntegrity::check(&mut back, &wrong, creds.crypto.crypto()).is_err());
    }
}
