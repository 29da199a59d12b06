//! The listener: accepting TCP (and TLS), HTTP routing, the WebSocket upgrade, the
//! background sweeper and graceful shutdown.
//!
//! Owns: the global connection cap, per-address admission (after resolving the client
//! address, trusting `X-Forwarded-For` only from configured proxies), `/healthz`,
//! `/metrics`, `/ws`, and the task tracker every connection task is spawned on.
//! Must not: route anything else (no listing endpoint exists), or keep a task that
//! outlives `run`.

use std::convert::Infallible;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, CONNECTION, CONTENT_TYPE, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{timeout_at, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{canonical, Limits};
use crate::hub::Hub;
use crate::limits::{IpKey, IpRefusal, IpTable};
use crate::metrics::{Metrics, Reason};
use crate::{conn, tls, Config, Error};

/// State shared by every task of one server.
pub(crate) struct Shared {
    pub(crate) config: Config,
    pub(crate) metrics: Arc<Metrics>,
    hub: Mutex<Hub>,
    ips: Mutex<IpTable>,
    /// Cancelled once, on shutdown; every session watches it.
    pub(crate) stop: CancellationToken,
    tasks: TaskTracker,
    ws_config: WebSocketConfig,
}

impl Shared {
    pub(crate) fn new(config: Config) -> Self {
        let l = &config.limits;
        let metrics = Arc::new(Metrics::default());
        let hub = Hub::new(
            Limits::secs(l.nameplate_ttl_secs),
            l.max_nameplates_per_connection,
            metrics.clone(),
        );
        // Small read chunks: 10 000 idle sockets must fit in 300 MiB (the default is 128 KiB each).
        let ws_config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .max_message_size(Some(l.max_message_bytes))
            .max_frame_size(Some(l.max_message_bytes))
            .write_buffer_size(0)
            .max_write_buffer_size(l.max_message_bytes * 2 + 1024);
        Self {
            ips: Mutex::new(IpTable::new(l.clone())),
            hub: Mutex::new(hub),
            metrics,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            ws_config,
            config,
        }
    }

    /// The hub, even if a panic elsewhere poisoned the lock (its state stays consistent:
    /// every method finishes its changes before it can panic).
    pub(crate) fn lock_hub(&self) -> MutexGuard<'_, Hub> {
        self.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn lock_ips(&self) -> MutexGuard<'_, IpTable> {
        self.ips.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn ws_config(&self) -> WebSocketConfig {
        self.ws_config
    }
}

/// Serves until `shutdown` completes, then tells every client to reconnect and returns
/// once all connection tasks have ended (at most the shutdown grace period later).
pub async fn run(
    listener: TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), Error> {
    config.validate()?;
    let tls = tls::acceptor(&config)?;
    let grace = Limits::secs(config.limits.shutdown_grace_secs);
    let permits = Arc::new(Semaphore::new(config.limits.max_connections));
    let shared = Arc::new(Shared::new(config));
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, tls = tls.is_some(), "skiff-signal listening");
    }
    shared.tasks.spawn(sweeper(shared.clone()));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, addr)) => {
                    let Ok(permit) = permits.clone().try_acquire_owned() else {
                        shared.metrics.reject(Reason::ServerFull);
                        drop(tcp); // shed load: the client backs off and retries
                        continue;
                    };
                    let _ = tcp.set_nodelay(true);
                    shared.tasks.spawn(serve_tcp(shared.clone(), tcp, addr, tls.clone(), permit));
                }
                Err(e) => {
                    // Out of file descriptors and aborted handshakes are transient.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    tracing::info!("shutting down: telling clients to reconnect");
    drop(listener);
    shared.stop.cancel();
    shared.tasks.close();
    if tokio::time::timeout(grace + Duration::from_secs(1), shared.tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some connections did not close within the grace period");
    }
    Ok(())
}

/// Expires nameplates and forgets idle addresses.
pub(crate) async fn sweeper(shared: Arc<Shared>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut n: u64 = 0;
    loop {
        tokio::select! {
            biased;
            () = shared.stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let expired = shared.lock_hub().expire(now);
        if expired > 0 {
            tracing::debug!(expired, "nameplates expired");
        }
        n += 1;
        if n % 30 == 0 {
            shared.lock_ips().sweep(now);
        }
    }
}

/// Counts a TCP connection for `/metrics` while it lives.
struct TcpGauge(Arc<Metrics>);

impl Drop for TcpGauge {
    fn drop(&mut self) {
        Metrics::dec(&self.0.tcp_connections);
    }
}

/// What a connection holds: its slot under the global cap and its gauge.
struct Slot {
    _permit: OwnedSemaphorePermit,
    _gauge: TcpGauge,
}

async fn serve_tcp(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    permit: OwnedSemaphorePermit,
) {
    let deadline = Instant::now() + Limits::secs(shared.config.limits.handshake_timeout_secs);
    Metrics::inc(&shared.metrics.tcp_connections);
    let slot = Arc::new(Slot {
        _permit: permit,
        _gauge: TcpGauge(shared.metrics.clone()),
    });
    match tls {
        None => serve_http(shared, tcp, peer, deadline, slot).await,
        Some(tls) => match timeout_at(deadline, tls.accept(tcp)).await {
            Ok(Ok(stream)) => serve_http(shared, stream, peer, deadline, slot).await,
            Ok(Err(_)) => shared.metrics.reject(Reason::BadUpgrade),
            Err(_) => shared.metrics.reject(Reason::HandshakeTimeout),
        },
    }
}

async fn serve_http<Io>(
    shared: Arc<Shared>,
    io: Io,
    peer: SocketAddr,
    deadline: Instant,
    slot: Arc<Slot>,
) where
    Io: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service_shared = shared.clone();
    let service = hyper::service::service_fn(move |req| {
        let response = route(&service_shared, req, peer.ip(), deadline, &slot);
        async move { Ok::<_, Infallible>(response) }
    });
    let header_timeout = deadline.saturating_duration_since(Instant::now());
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .serve_connection(TokioIo::new(io), service)
        .with_upgrades();
    tokio::select! {
        biased;
        () = shared.stop.cancelled() => {}
        // Plain HTTP requests (also kept-alive ones) must finish within the deadline too.
        r = timeout_at(deadline, conn) => if r.is_err() {
            shared.metrics.reject(Reason::HandshakeTimeout);
        },
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// The client's address: the TCP peer, or for a trusted proxy the last address in
/// `X-Forwarded-For` that is not itself a trusted proxy.
fn client_ip(config: &Config, peer: IpAddr, headers: &hyper::HeaderMap) -> IpAddr {
    let peer = canonical(peer);
    let trusted = |ip: IpAddr| config.trusted_proxies.iter().any(|c| c.contains(ip));
    if !trusted(peer) {
        return peer;
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(value) = value.to_str() else {
            return peer;
        };
        for part in value.split(',') {
            match part.trim().parse::<IpAddr>() {
                Ok(ip) => chain.push(canonical(ip)),
                Err(_) => return peer,
            }
        }
    }
    chain
        .into_iter()
        .rev()
        .find(|ip| !trusted(*ip))
        .unwrap_or(peer)
}

fn route(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    peer: IpAddr,
    deadline: Instant,
    slot: &Arc<Slot>,
) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    match req.uri().path() {
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/metrics" => {
            let allow = &shared.config.metrics_allow;
            if !allow.is_empty() && !allow.iter().any(|c| c.contains(peer)) {
                return text(StatusCode::FORBIDDEN, "forbidden\n");
            }
            let body = {
                let hub = shared.lock_hub();
                shared
                    .metrics
                    .render(hub.space_count(), hub.nameplate_count())
            };
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            r
        }
        "/ws" => upgrade(shared, req, peer, deadline, slot),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn header_has(req: &Request<Incoming>, name: hyper::header::HeaderName, token: &str) -> bool {
    req.headers().get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Removes a socket from its address's count when the session ends.
struct IpSlot {
    shared: Arc<Shared>,
    key: IpKey,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        self.shared.lock_ips().close_socket(self.key);
    }
}

fn upgrade(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    peer: IpAddr,
    deadline: Instant,
    slot: &Arc<Slot>,
) -> Response<Full<Bytes>> {
    let key = req
        .headers()
        .get("sec-websocket-key")
        .map(|k| derive_accept_key(k.as_bytes()));
    let version_ok = req
        .headers()
        .get("sec-websocket-version")
        .is_some_and(|v| v == "13");
    let (Some(accept), true, true, true) = (
        key,
        version_ok,
        header_has(&req, UPGRADE, "websocket"),
        header_has(&req, CONNECTION, "upgrade"),
    ) else {
        shared.metrics.reject(Reason::BadUpgrade);
        return text(StatusCode::BAD_REQUEST, "expected a WebSocket upgrade\n");
    };
    let ip = client_ip(&shared.config, peer, req.headers());
    let ip_key = IpKey::of(ip);
    if let Err(refusal) = shared.lock_ips().open_socket(ip_key, Instant::now()) {
        let reason = match refusal {
            IpRefusal::TooManySockets => Reason::PerIpSockets,
            IpRefusal::TooManyNewConnections => Reason::PerIpRate,
        };
        shared.metrics.reject(reason);
        return text(
            StatusCode::TOO_MANY_REQUESTS,
            "too many connections from your address\n",
        );
    }
    let ip_slot = IpSlot {
        shared: shared.clone(),
        key: ip_key,
    };
    let task_shared = shared.clone();
    let slot = slot.clone();
    shared.tasks.spawn(async move {
        let _slots = (slot, ip_slot);
        let upgraded = match timeout_at(deadline, hyper::upgrade::on(req)).await {
            Ok(Ok(upgraded)) => upgraded,
            Ok(Err(_)) => return,
            Err(_) => {
                task_shared.metrics.reject(Reason::HandshakeTimeout);
                return;
            }
        };
        let config = task_shared.ws_config();
        let ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        conn::serve_socket(task_shared, ws, ip, deadline).await;
    });
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn forwarded_for_is_read_right_to_left_and_only_behind_trusted_proxies() {
        let config = Config {
            trusted_proxies: vec!["10.0.0.0/8".parse().unwrap()],
            ..Config::default()
        };
        let mut h = hyper::HeaderMap::new();
        h.append(
            "x-forwarded-for",
            "6.6.6.6, 198.51.100.7, 10.1.1.1".parse().unwrap(),
        );
        // From a trusted proxy: the last address that is not a proxy (a client-supplied
        // prefix like 6.6.6.6 is ignored).
        assert_eq!(client_ip(&config, ip("10.0.0.2"), &h), ip("198.51.100.7"));
        // From anyone else the header means nothing.
        assert_eq!(client_ip(&config, ip("203.0.113.9"), &h), ip("203.0.113.9"));
        // Several headers are one list; garbage falls back to the peer.
        let mut two = hyper::HeaderMap::new();
        two.append("x-forwarded-for", "192.0.2.1".parse().unwrap());
        two.append("x-forwarded-for", "10.2.2.2".parse().unwrap());
        assert_eq!(client_ip(&config, ip("10.0.0.2"), &two), ip("192.0.2.1"));
        let mut bad = hyper::HeaderMap::new();
        bad.append("x-forwarded-for", "not-an-ip".parse().unwrap());
        assert_eq!(client_ip(&config, ip("10.0.0.2"), &bad), ip("10.0.0.2"));
        // Only proxies in the chain, or no header: the proxy itself.
        let mut proxies = hyper::HeaderMap::new();
        proxies.append("x-forwarded-for", "10.9.9.9".parse().unwrap());
        assert_eq!(client_ip(&config, ip("10.0.0.2"), &proxies), ip("10.0.0.2"));
        assert_eq!(
            client_ip(&config, ip("::ffff:10.0.0.2"), &hyper::HeaderMap::new()),
            ip("10.0.0.2")
        );
    }
}
