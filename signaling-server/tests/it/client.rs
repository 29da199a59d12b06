//! The engine's signaling client (`skiff_core::signal`) against the real server:
//! presence, pairing, relay, reconnect with backoff after a restart, and `probe`.

use std::net::SocketAddr;
use std::time::Duration;

use skiff_core::signal::{probe, Backoff, SignalClient, SignalEvent, SignalOptions};
use skiff_proto::signal::{DeviceId, SealedBlob, SpaceName};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_util::sync::CancellationToken;

use crate::util::*;

fn options(addr: SocketAddr, device: &str, space: Option<&str>) -> SignalOptions {
    SignalOptions {
        url: format!("ws://{addr}/ws"),
        device_id: DeviceId::try_from(device).unwrap(),
        name: format!("{device} name"),
        space: space.map(|s| SpaceName::try_from(s).unwrap()),
        backoff: Backoff {
            min: Duration::from_millis(50),
            max: Duration::from_millis(400),
        },
    }
}

async fn event(rx: &mut mpsc::Receiver<SignalEvent>) -> SignalEvent {
    timeout(WAIT, rx.recv())
        .await
        .expect("no event in time")
        .expect("client stopped")
}

/// Skips events until one matches.
async fn until<T>(
    rx: &mut mpsc::Receiver<SignalEvent>,
    mut f: impl FnMut(SignalEvent) -> Option<T>,
) -> T {
    loop {
        if let Some(t) = f(event(rx).await) {
            return t;
        }
    }
}

#[tokio::test]
async fn client_sees_presence_pairs_and_relays() {
    let server = start(roomy()).await;
    let (a, mut a_rx) = SignalClient::spawn(options(server.addr, "core-a", None));
    let a_id = until(&mut a_rx, |e| match e {
        SignalEvent::Connected {
            peer_id, version, ..
        } => {
            assert_eq!(version, 1);
            Some(peer_id)
        }
        _ => None,
    })
    .await;
    let (b, mut b_rx) = SignalClient::spawn(options(server.addr, "core-b", Some("elsewhere")));
    let b_id = until(&mut b_rx, |e| match e {
        SignalEvent::Connected { peer_id, .. } => Some(peer_id),
        _ => None,
    })
    .await;
    let plate = a.allocate().await.unwrap();
    assert_eq!(b.claim(plate.clone()).await.unwrap(), a_id);
    let joined = until(&mut a_rx, |e| match e {
        SignalEvent::NameplateJoined { peer, .. } => Some(peer),
        _ => None,
    })
    .await;
    assert_eq!(joined, b_id);
    let err = b.claim(plate.clone()).await.unwrap_err();
    assert_eq!(err.code(), "signal");
    b.send(a_id.clone(), SealedBlob("c2VhbGVk".into()))
        .await
        .unwrap();
    let got = until(&mut a_rx, |e| match e {
        SignalEvent::Message { from, blob } => Some((from, blob)),
        _ => None,
    })
    .await;
    assert_eq!(got, (b_id.clone(), SealedBlob("c2VhbGVk".into())));
    assert!(a.ping().await.unwrap() < Duration::from_secs(1));
    b.release(plate).await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
    server.stop().await;
}

#[tokio::test]
async fn client_reconnects_with_backoff_after_a_restart_and_restores_presence() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let first = tokio::spawn(skiff_signal::run(
        listener,
        roomy(),
        stop.clone().cancelled_owned(),
    ));
    let (a, mut a_rx) = SignalClient::spawn(options(addr, "survivor-a", Some("room")));
    let (b, mut b_rx) = SignalClient::spawn(options(addr, "survivor-b", Some("room")));
    let old_a = until(&mut a_rx, |e| match e {
        SignalEvent::Connected { peer_id, .. } => Some(peer_id),
        _ => None,
    })
    .await;
    until(&mut b_rx, |e| {
        matches!(e, SignalEvent::Connected { .. }).then_some(())
    })
    .await;

    // The server goes away (graceful: close 1012) and comes back on the same port.
    stop.cancel();
    timeout(WAIT, first).await.unwrap().unwrap().unwrap();
    let retry = until(&mut a_rx, |e| match e {
        SignalEvent::Disconnected { retry_in, .. } => Some(retry_in),
        _ => None,
    })
    .await;
    assert!(retry <= Duration::from_millis(400));
    // A request while disconnected fails at once instead of hanging.
    assert_eq!(a.allocate().await.unwrap_err().code(), "signal");
    let listener = TcpListener::bind(addr).await.unwrap();
    let stop = CancellationToken::new();
    let second = tokio::spawn(skiff_signal::run(
        listener,
        roomy(),
        stop.clone().cancelled_owned(),
    ));

    let new_a = until(&mut a_rx, |e| match e {
        SignalEvent::Connected { peer_id, .. } => Some(peer_id),
        _ => None,
    })
    .await;
    assert_ne!(new_a, old_a, "a new session");
    // Presence is restored: b, reconnecting too, ends up seeing a exactly once.
    let seen_by_b = until(&mut b_rx, |e| match e {
        SignalEvent::Peers { list } if !list.is_empty() => Some(list),
        SignalEvent::PeerJoined { peer } => Some(vec![peer]),
        _ => None,
    })
    .await;
    assert_eq!(seen_by_b.len(), 1);
    assert_eq!(seen_by_b[0].device_id.as_str(), "survivor-a");
    a.allocate().await.unwrap();
    a.shutdown().await;
    b.shutdown().await;
    stop.cancel();
    timeout(WAIT, second).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn client_keeps_retrying_while_the_server_is_down() {
    // Reserve a port with nothing listening on it.
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let (c, mut rx) = SignalClient::spawn(options(addr, "patient", None));
    let mut delays = Vec::new();
    while delays.len() < 4 {
        if let SignalEvent::Disconnected { retry_in, .. } = event(&mut rx).await {
            delays.push(retry_in);
        }
    }
    // 50, 100, 200, 400 ms ceilings, each jittered into its upper half.
    for (n, d) in delays.iter().enumerate() {
        let ceiling = Duration::from_millis(50 << n.min(3));
        assert!(*d >= ceiling / 2 && *d <= ceiling, "attempt {n}: {d:?}");
    }
    c.shutdown().await;
}

#[tokio::test]
async fn probe_reports_version_latency_and_turn() {
    let mut config = roomy();
    config.turn.secret = Some("probe-secret".into());
    config.turn.urls = vec!["turn:127.0.0.1:3478?transport=udp".into()];
    let with_turn = start(config).await;
    let plain = start(roomy()).await;
    let report = probe(&format!("ws://{}/ws", with_turn.addr)).await.unwrap();
    assert_eq!(report.version, 1);
    assert!(report.turn);
    assert!(report.latency_ms < 1000.0);
    assert_eq!(
        report.ice_servers,
        vec!["turn:127.0.0.1:3478?transport=udp".to_owned()]
    );
    let report = probe(&format!("ws://{}/ws", plain.addr)).await.unwrap();
    assert!(!report.turn);
    // Nothing listening: a clear error, quickly.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let err = probe(&format!("ws://{dead}/ws")).await.unwrap_err();
    assert_eq!(err.code(), "signal");
    // The probe joined a private space: a peer of this address saw nothing.
    let watcher = Client::connect(with_turn.addr, "watcher").await;
    assert!(watcher.peers.is_empty());
    with_turn.stop().await;
    plain.stop().await;
}

/// S8: `kill -9` of the server binary, restart on the same port: serving within 2 s,
/// clients reconnect with backoff, and nobody is listed twice.
#[tokio::test]
async fn clients_survive_a_kill_9_and_restart_of_the_binary() {
    use std::process::{Command, Stdio};
    let addr = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let spawn = || {
        Command::new(env!("CARGO_BIN_EXE_skiff-signal"))
            .args(["--listen", &addr.to_string()])
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let healthy = || async move {
        try_http_get(addr, "/healthz")
            .await
            .is_some_and(|(s, _)| s == 200)
    };
    let mut server = spawn();
    assert!(eventually(healthy).await, "server did not start");
    let (a, mut a_rx) = SignalClient::spawn(options(addr, "s8-a", Some("s8")));
    let (b, mut b_rx) = SignalClient::spawn(options(addr, "s8-b", Some("s8")));
    until(&mut a_rx, |e| {
        matches!(e, SignalEvent::Connected { .. }).then_some(())
    })
    .await;
    until(&mut b_rx, |e| {
        matches!(e, SignalEvent::Connected { .. }).then_some(())
    })
    .await;

    server.kill().unwrap(); // SIGKILL: no close frames, no goodbye
    server.wait().unwrap();
    until(&mut a_rx, |e| {
        matches!(e, SignalEvent::Disconnected { .. }).then_some(())
    })
    .await;
    let restarted = std::time::Instant::now();
    let mut server = spawn();
    assert!(eventually(healthy).await);
    let to_serving = restarted.elapsed();
    assert!(
        to_serving < Duration::from_secs(2),
        "restart to serving took {to_serving:?}"
    );

    // Both come back; in the end each sees exactly one other member of the space.
    let mut a_sees = Vec::new();
    loop {
        match event(&mut a_rx).await {
            SignalEvent::Peers { list } => a_sees = list.into_iter().map(|p| p.device_id).collect(),
            SignalEvent::PeerJoined { peer } => a_sees.push(peer.device_id),
            SignalEvent::PeerLeft { .. } => a_sees.clear(),
            _ => {}
        }
        if !a_sees.is_empty() {
            break;
        }
    }
    assert_eq!(a_sees.len(), 1);
    assert_eq!(a_sees[0].as_str(), "s8-b");
    assert!(a.ping().await.is_ok());
    assert!(b.ping().await.is_ok());
    a.shutdown().await;
    b.shutdown().await;
    server.kill().unwrap();
    server.wait().unwrap();
}

/// T5 (shortened): TURN credentials are refreshed by the client at 80 % of their TTL.
#[tokio::test]
async fn client_refreshes_turn_credentials_at_eighty_percent_of_the_ttl() {
    let mut config = roomy();
    config.turn.secret = Some("refresh-secret".into());
    config.turn.urls = vec!["turn:127.0.0.1:3478".into()];
    config.turn.ttl_secs = 2;
    let server = start(config).await;
    let (c, mut rx) = SignalClient::spawn(options(server.addr, "refresher", None));
    let first = until(&mut rx, |e| match e {
        SignalEvent::Connected {
            ice_servers,
            ice_ttl_secs,
            ..
        } => Some((ice_servers, ice_ttl_secs)),
        _ => None,
    })
    .await;
    assert_eq!(first.1, 2);
    let started = std::time::Instant::now();
    let fresh = until(&mut rx, |e| match e {
        SignalEvent::IceServers { ice_servers, .. } => Some(ice_servers),
        _ => None,
    })
    .await;
    let after = started.elapsed();
    assert!(
        after >= Duration::from_millis(1400) && after < Duration::from_millis(3500),
        "{after:?}"
    );
    let user = |s: &[skiff_proto::signal::IceServer]| s[0].username.clone().unwrap();
    assert!(
        user(&fresh) >= user(&first.0),
        "a credential at least as fresh"
    );
    c.shutdown().await;
    server.stop().await;
}
