//! Paired transfers through a real in-process `skiff-signal` on loopback, with direct TCP
//! switched off so the data takes the WebRTC path negotiated at the rendezvous; and a
//! receiver that restarts mid-transfer and meets the sender again there, without a code.

use std::path::Path;
use std::time::Duration;

use skiff_core::events::Event;
use skiff_core::transport::webrtc::RtcConfig;
use skiff_core::{Config, Node, Outcome, ReceiveOptions, SendOptions};

use crate::util::*;

/// A `skiff-signal` on 127.0.0.1:0, running until dropped.
struct Server {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Server {
    async fn start() -> Server {
        Self::start_with(skiff_signal::Config::default()).await
    }

    async fn start_with(config: skiff_signal::Config) -> Server {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.await;
            };
            skiff_signal::run(listener, config, shutdown).await.unwrap();
        });
        Server {
            url,
            stop: Some(stop),
            task: Some(task),
        }
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// A node that offers and tries no direct TCP and binds WebRTC to loopback.
async fn rtc_node(data: &Path, home: &Path, url: &str) -> Node {
    rtc_node_with(data, home, url, false).await
}

/// With `relay_only`, WebRTC may use TURN relay candidates only.
async fn rtc_node_with(data: &Path, home: &Path, url: &str, relay_only: bool) -> Node {
    // `RUST_LOG=skiff_core=debug` shows the negotiation when a test fails.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let mut config = Config::new(Some(data.to_owned()));
    config.download_dir = home.join("Downloads");
    config.device_name = "rtc-test".into();
    config.tcp_paths = false;
    config.rtc = RtcConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        relay_only,
        ..RtcConfig::default()
    };
    let node = Node::spawn(config).await.unwrap();
    node.set_signal_url(Some(url.to_owned())).await.unwrap();
    node
}

fn connected_paths(events: &mut tokio::sync::broadcast::Receiver<Event>) -> Vec<String> {
    let mut out = Vec::new();
    while let Ok(ev) = events.try_recv() {
        if let Event::Connected { path, .. } = ev {
            out.push(path);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_through_the_server_sends_over_webrtc() {
    let server = Server::start().await;
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let sender = rtc_node(&a.join("state"), &a, &server.url).await;
    let receiver = rtc_node(&b.join("state"), &b, &server.url).await;
    let mut sender_events = sender.events();
    let mut receiver_events = receiver.events();
    let src = a.join("clip.bin");
    let data = bytes(9 * 1024 * 1024 + 17, 7);
    std::fs::write(&src, &data).unwrap();
    let started = within(
        "send",
        sender.send(
            vec![src],
            SendOptions {
                listen: "127.0.0.1:0".into(),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    let dest = b.join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let offer = within(
        "receive",
        receiver.receive(
            &started.code,
            ReceiveOptions {
                connect: String::new(),
                dir: Some(dest.clone()),
                auto_accept: true,
                reconnect_for: Duration::from_secs(5),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap();
    let out = within("receiver", receiver.wait(&offer.id)).await.unwrap();
    let Outcome::Done { path, files } = out else {
        panic!("receiver: {out:?}")
    };
    assert_eq!(
        path, "lan",
        "a host-to-host WebRTC pair on loopback is a LAN path"
    );
    assert_eq!(std::fs::read(dest.join("clip.bin")).unwrap(), data);
    assert_eq!(files[0].sha256, sha_hex(&data));
    let sent = within("sender", sender.wait(&started.id)).await.unwrap();
    assert!(
        matches!(sent, Outcome::Done { ref path, .. } if path == "lan"),
        "{sent:?}"
    );
    for p in connected_paths(&mut receiver_events)
        .into_iter()
        .chain(connected_paths(&mut sender_events))
    {
        assert_eq!(p, "lan");
    }
    let listed = receiver.list().await.unwrap();
    assert_eq!(listed[0].path.as_deref(), Some("lan"));
    sender.shutdown().await;
    receiver.shutdown().await;
    server.stop().await;
    assert_no_engine_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_receiver_meets_the_sender_at_the_rendezvous() {
    let server = Server::start().await;
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let sender = rtc_node(&a.join("state"), &a, &server.url).await;
    let mut receiver = rtc_node(&b.join("state"), &b, &server.url).await;
    let src = a.join("big.bin");
    let data = bytes(96 * 1024 * 1024, 3);
    std::fs::write(&src, &data).unwrap();
    let started = sender
        .send(
            vec![src],
            SendOptions {
                listen: "127.0.0.1:0".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dest = b.join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let opts = ReceiveOptions {
        connect: String::new(),
        dir: Some(dest.clone()),
        auto_accept: true,
        reconnect_for: Duration::from_secs(30),
        ..Default::default()
    };
    let mut events = receiver.events();
    let offer = within("receive", receiver.receive(&started.code, opts))
        .await
        .unwrap();
    // Stop the receiver once some data is safe on disk.
    within("progress", async {
        loop {
            if let Ok(Event::Progress { bytes, .. }) = events.recv().await {
                if bytes > 8 * 1024 * 1024 {
                    break;
                }
            }
        }
    })
    .await;
    within("receiver shutdown", receiver.shutdown()).await;
    receiver = rtc_node(&b.join("state"), &b, &server.url).await;
    let resumable = receiver.resumable().await.unwrap();
    assert_eq!(resumable, vec![offer.id.clone()]);
    receiver
        .resume(&offer.id, Duration::from_secs(30))
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(60), receiver.wait(&offer.id))
        .await
        .expect("resumed receiver finished")
        .unwrap();
    assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
    assert!(std::fs::read(dest.join("big.bin")).unwrap() == data);
    let sent = tokio::time::timeout(Duration::from_secs(30), sender.wait(&started.id))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(sent, Outcome::Done { .. }), "{sent:?}");
    sender.shutdown().await;
    receiver.shutdown().await;
    server.stop().await;
    assert_no_engine_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_download_stays_paused_and_resumes_from_its_checkpoint() {
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let sender = spawn_node(&a.join("state"), &a).await;
    let receiver = spawn_node(&b.join("state"), &b).await;
    let src = a.join("movie.bin");
    let data = bytes(64 * 1024 * 1024, 9);
    std::fs::write(&src, &data).unwrap();
    let started = sender
        .send(
            vec![src],
            SendOptions {
                listen: "127.0.0.1:0".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dest = b.join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let mut events = receiver.events();
    let offer = receiver
        .receive(
            &started.code,
            ReceiveOptions {
                connect: started.listen.clone(),
                dir: Some(dest.clone()),
                auto_accept: true,
                reconnect_for: Duration::from_secs(30),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    within("progress", async {
        loop {
            if let Ok(Event::Progress { bytes, .. }) = events.recv().await {
                if bytes > 4 * 1024 * 1024 {
                    break;
                }
            }
        }
    })
    .await;
    receiver.pause(&offer.id).await.unwrap();
    let out = within("paused", receiver.wait(&offer.id)).await.unwrap();
    assert_failed(&out, "interrupted");
    let listed = receiver.list().await.unwrap();
    assert_eq!(listed[0].state, "paused");
    assert!(listed[0].held.unwrap() < data.len() as u64);
    assert_eq!(receiver.resumable().await.unwrap(), vec![offer.id.clone()]);
    receiver
        .resume(&offer.id, Duration::from_secs(30))
        .await
        .unwrap();
    let out = within("resumed", receiver.wait(&offer.id)).await.unwrap();
    assert!(matches!(out, Outcome::Done { .. }), "{out:?}");
    assert!(std::fs::read(dest.join("movie.bin")).unwrap() == data);
    sender.shutdown().await;
    receiver.shutdown().await;
    assert_no_engine_panic();
}

/// UDP blocked: no TURN-over-UDP, so WebRTC cannot connect (relay-only, and the only
/// TURN URL is TCP, which webrtc 0.21.1 does not use); the receiver falls back to the
/// sender's RFC 6062 TCP allocation on coturn, and the transfer completes as `turn-tcp`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_udp_the_transfer_takes_the_tcp_relay() {
    let Some(turn) = crate::turn_tcp::Coturn::start(7, &[]).await else {
        return;
    };
    let mut config = skiff_signal::Config::default();
    config.turn.secret = Some(crate::turn_tcp::SECRET.to_owned());
    config.turn.urls = vec![format!("turn:127.0.0.1:{}?transport=tcp", turn.port)];
    let server = Server::start_with(config).await;
    let t = tempfile::tempdir().unwrap();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    let sender = rtc_node_with(&a.join("state"), &a, &server.url, true).await;
    let receiver = rtc_node_with(&b.join("state"), &b, &server.url, true).await;
    let src = a.join("report.bin");
    let data = bytes(6 * 1024 * 1024 + 3, 5);
    std::fs::write(&src, &data).unwrap();
    let started = sender
        .send(
            vec![src],
            SendOptions {
                listen: "127.0.0.1:0".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let dest = b.join("dest");
    std::fs::create_dir_all(&dest).unwrap();
    let offer = tokio::time::timeout(
        Duration::from_secs(40),
        receiver.receive(
            &started.code,
            ReceiveOptions {
                connect: String::new(),
                dir: Some(dest.clone()),
                auto_accept: true,
                reconnect_for: Duration::from_secs(5),
                ..Default::default()
            },
        ),
    )
    .await
    .expect("connected within 40 s")
    .unwrap();
    let out = within("receiver", receiver.wait(&offer.id)).await.unwrap();
    let Outcome::Done { path, .. } = out else {
        panic!("receiver: {out:?}")
    };
    assert_eq!(path, "turn-tcp");
    assert!(std::fs::read(dest.join("report.bin")).unwrap() == data);
    let sent = within("sender", sender.wait(&started.id)).await.unwrap();
    assert!(
        matches!(sent, Outcome::Done { ref path, .. } if path == "turn-tcp"),
        "{sent:?}"
    );
    sender.shutdown().await;
    receiver.shutdown().await;
    server.stop().await;
    drop(turn);
    assert_no_engine_panic();
}
