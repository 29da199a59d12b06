//! Shared test code: an in-process server on port 0 and a WebSocket test client.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use skiff_proto::signal::{ClientMsg, DeviceId, Nameplate, PeerId, PeerInfo, ServerMsg, SpaceName};
use skiff_signal::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

pub const WAIT: Duration = Duration::from_secs(5);

pub struct Server {
    pub addr: SocketAddr,
    stop: CancellationToken,
    handle: JoinHandle<Result<(), skiff_signal::Error>>,
}

pub async fn start(config: Config) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let handle = tokio::spawn(skiff_signal::run(
        listener,
        config,
        stop.clone().cancelled_owned(),
    ));
    Server { addr, stop, handle }
}

/// A config whose per-address limits do not get in the way of tests that open many sockets.
pub fn roomy() -> Config {
    let mut c = Config::default();
    c.limits.new_connection_burst = 1000.0;
    c.limits.new_connections_per_min = 60_000.0;
    c.limits.max_sockets_per_ip = 1000;
    c
}

impl Server {
    /// Stops the server and checks it exits cleanly.
    pub async fn stop(self) {
        self.stop.cancel();
        timeout(Duration::from_secs(10), self.handle)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
    }

    /// `GET path` over plain HTTP/1.1; returns (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        http_get(self.addr, path).await
    }

    pub async fn metric(&self, name: &str) -> u64 {
        let (_, body) = self.get("/metrics").await;
        body.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no metric {name} in\n{body}"))
            .trim()
            .parse()
            .unwrap()
    }
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    timeout(WAIT, tcp.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub type Ws = WebSocketStream<TcpStream>;

/// A TCP connection from a chosen loopback source address (127.0.0.0/8 all reach 127.0.0.1).
pub async fn tcp_from(addr: SocketAddr, source: IpAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::new(source, 0)).unwrap();
    socket.connect(addr).await.unwrap()
}

/// Upgrades to a WebSocket; `Err(status)` when the server refuses the upgrade.
pub async fn ws_from(
    addr: SocketAddr,
    source: IpAddr,
    headers: &[(&str, &str)],
) -> Result<Ws, u16> {
    let tcp = tcp_from(addr, source).await;
    let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
    for (k, v) in headers {
        let name = hyper_name(k);
        req.headers_mut().insert(name, v.parse().unwrap());
    }
    let config = WebSocketConfig::default()
        .max_message_size(None)
        .max_frame_size(None);
    match tokio_tungstenite::client_async_with_config(req, tcp, Some(config)).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("upgrade failed: {e}"),
    }
}

fn hyper_name(k: &str) -> tokio_tungstenite::tungstenite::http::HeaderName {
    tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(k.as_bytes()).unwrap()
}

pub fn localhost() -> IpAddr {
    "127.0.0.1".parse().unwrap()
}

pub struct Client {
    pub ws: Ws,
    pub peer_id: PeerId,
    pub peers: Vec<PeerInfo>,
    pub welcome: ServerMsg,
}

pub fn hello(device: &str, space: Option<&str>) -> ClientMsg {
    ClientMsg::Hello {
        version: skiff_proto::signal::SIGNAL_VERSION,
        device_id: DeviceId::try_from(device).unwrap(),
        name: format!("{device} name"),
        space: space.map(|s| SpaceName::try_from(s).unwrap()),
    }
}

pub async fn send(ws: &mut Ws, msg: &ClientMsg) {
    ws.send(Message::text(msg.encode())).await.unwrap();
}

/// The next protocol message (skipping pings), under a timeout.
pub async fn recv(ws: &mut Ws) -> ServerMsg {
    loop {
        let frame = timeout(WAIT, ws.next()).await.expect("no message in time");
        match frame.expect("socket ended").expect("socket error") {
            Message::Text(t) => return ServerMsg::decode(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

/// Reads until the server closes; returns the close code (None if the TCP just ended),
/// and the protocol messages seen before it.
pub async fn recv_close(ws: &mut Ws) -> (Option<u16>, Vec<ServerMsg>) {
    let mut seen = Vec::new();
    loop {
        let frame = timeout(WAIT, ws.next()).await.expect("not closed in time");
        match frame {
            None | Some(Err(_)) => return (None, seen),
            Some(Ok(Message::Close(frame))) => return (frame.map(|f| u16::from(f.code)), seen),
            Some(Ok(Message::Text(t))) => seen.push(ServerMsg::decode(t.as_str()).unwrap()),
            Some(Ok(_)) => {}
        }
    }
}

impl Client {
    pub async fn connect(addr: SocketAddr, device: &str) -> Self {
        Self::connect_in(addr, device, None, localhost()).await
    }

    pub async fn connect_in(
        addr: SocketAddr,
        device: &str,
        space: Option<&str>,
        source: IpAddr,
    ) -> Self {
        let mut ws = ws_from(addr, source, &[]).await.expect("upgrade refused");
        send(&mut ws, &hello(device, space)).await;
        let welcome = recv(&mut ws).await;
        let ServerMsg::Welcome { peer_id, .. } = &welcome else {
            panic!("expected welcome, got {welcome:?}")
        };
        let peer_id = peer_id.clone();
        let ServerMsg::Peers { list } = recv(&mut ws).await else {
            panic!("expected peers")
        };
        Client {
            ws,
            peer_id,
            peers: list,
            welcome,
        }
    }

    pub async fn send(&mut self, msg: ClientMsg) {
        send(&mut self.ws, &msg).await;
    }

    pub async fn recv(&mut self) -> ServerMsg {
        recv(&mut self.ws).await
    }

    pub async fn allocate(&mut self) -> Nameplate {
        self.send(ClientMsg::Allocate).await;
        match self.recv().await {
            ServerMsg::Allocated { nameplate } => nameplate,
            other => panic!("expected allocated, got {other:?}"),
        }
    }

    /// Claims and returns the server's answer.
    pub async fn claim(&mut self, nameplate: &Nameplate) -> ServerMsg {
        self.send(ClientMsg::Claim {
            nameplate: nameplate.clone(),
        })
        .await;
        self.recv().await
    }

    /// A round trip that proves the connection is still served.
    pub async fn ping(&mut self, id: u64) {
        self.send(ClientMsg::Ping { id }).await;
        assert_eq!(self.recv().await, ServerMsg::Pong { id });
    }
}

/// Retries `check` until it holds or [`WAIT`] passes: for server-side bookkeeping that
/// finishes just after the event a test can observe (a task ending, a slot freed).
pub async fn eventually<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// `GET path` that tolerates refused or reset connections (returns None then).
pub async fn try_http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut tcp = TcpStream::connect(addr).await.ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.ok()?;
    let mut out = String::new();
    timeout(WAIT, tcp.read_to_string(&mut out))
        .await
        .ok()?
        .ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((status, body))
}
