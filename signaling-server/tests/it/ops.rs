//! Operations: /healthz, /metrics, graceful shutdown, TLS, and the real binary.

use skiff_proto::signal::{close, ClientMsg, SealedBlob, ServerMsg};

use crate::util::*;

#[tokio::test]
async fn healthz_and_metrics_are_served_on_the_same_port() {
    let server = start(roomy()).await;
    assert_eq!(server.get("/healthz").await, (200, "ok\n".to_owned()));
    let _a = Client::connect(server.addr, "a").await;
    let _b = Client::connect_in(server.addr, "b", Some("named"), localhost()).await;
    let (status, body) = server.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "skiff_signal_connections 2",
        "skiff_signal_spaces 2",
        "skiff_signal_nameplates 0",
        "skiff_signal_messages_relayed_total 0",
        "skiff_signal_rejections_total{reason=\"rate_limited\"} 0",
    ] {
        assert!(body.contains(name), "{name} missing in\n{body}");
    }
    assert!(!body.contains("127.0.0.1"), "no addresses in metrics");
    server.stop().await;
}

#[tokio::test]
async fn metrics_can_be_restricted_to_an_address_range() {
    let mut config = roomy();
    config.metrics_allow = vec!["10.0.0.0/8".parse().unwrap()];
    let server = start(config).await;
    assert_eq!(server.get("/metrics").await.0, 403);
    assert_eq!(server.get("/healthz").await.0, 200);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_tells_clients_to_reconnect_and_returns() {
    let server = start(roomy()).await;
    let mut a = Client::connect(server.addr, "a").await;
    let mut b = Client::connect(server.addr, "b").await;
    let _ = a.recv().await;
    let addr = server.addr;
    server.stop().await; // asserts a clean exit within 10 s
    assert_eq!(recv_close(&mut a.ws).await.0, Some(close::RESTART));
    assert_eq!(recv_close(&mut b.ws).await.0, Some(close::RESTART));
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "the listener is closed"
    );
}

#[tokio::test]
async fn tls_listener_serves_wss() {
    use std::sync::Arc;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let dir = std::env::temp_dir().join(format!("skiff-signal-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let mut config = roomy();
    config.tls_cert = Some(cert_path);
    config.tls_key = Some(key_path);
    let server = start(config).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert.cert.der().clone()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let url = format!("wss://localhost:{}/ws", server.addr.port());
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream).await.unwrap();
    use futures_util::{SinkExt, StreamExt};
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        hello("tls", None).encode(),
    ))
    .await
    .unwrap();
    let first = tokio::time::timeout(WAIT, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let msg = skiff_proto::signal::ServerMsg::decode(first.to_text().unwrap()).unwrap();
    assert!(
        matches!(msg, skiff_proto::signal::ServerMsg::Welcome { .. }),
        "{msg:?}"
    );
    // Plain HTTP on the TLS port gets nowhere.
    assert!(try_http_get(server.addr, "/healthz").await.is_none());
    server.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// The binary as an operator runs it: documented config file, flags, SIGTERM.
#[tokio::test]
async fn binary_serves_from_the_documented_config_and_stops_on_sigterm() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let config = concat!(env!("CARGO_MANIFEST_DIR"), "/skiff-signal.toml");
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff-signal"))
        .args(["--config", config, "--listen", "127.0.0.1:0"])
        .args(["--turn-url", "turn:127.0.0.1:3478?transport=udp"])
        .env("SKIFF_TURN_SECRET", "operator-secret")
        .env(
            "RUST_LOG",
            "trace,tungstenite=trace,tokio_tungstenite=trace",
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines() {
            let line = line.unwrap();
            if let Some(addr) = line.split("addr=").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap().to_owned());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    let addr: std::net::SocketAddr =
        tokio::task::spawn_blocking(move || rx.recv_timeout(WAIT).expect("no listening line"))
            .await
            .unwrap()
            .parse()
            .unwrap();
    assert_eq!(http_get(addr, "/healthz").await.0, 200);
    let mut a = Client::connect_in(addr, "op-a", Some("ops"), localhost()).await;
    let mut b = Client::connect_in(addr, "op-b", Some("ops"), localhost()).await;
    let ServerMsg::Welcome { ice_servers, .. } = a.welcome.clone() else {
        panic!()
    };
    let turn = ice_servers
        .iter()
        .find(|s| s.username.is_some())
        .expect("TURN credentials from the env secret");
    assert_eq!(
        turn.credential.clone().unwrap(),
        skiff_signal::turn_password("operator-secret", turn.username.as_deref().unwrap())
    );
    let _joined = a.recv().await;
    let secret_blob = SealedBlob("TOP-SECRET-CIPHERTEXT-0123456789".into());
    b.send(ClientMsg::Send {
        to: a.peer_id.clone(),
        blob: secret_blob.clone(),
    })
    .await;
    assert_eq!(
        a.recv().await,
        ServerMsg::Message {
            from: b.peer_id.clone(),
            blob: secret_blob
        }
    );
    let (_, metrics) = http_get(addr, "/metrics").await;
    assert!(
        metrics.contains("skiff_signal_messages_relayed_total 1"),
        "{metrics}"
    );
    assert!(metrics.contains("skiff_signal_connections 2"), "{metrics}");

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(recv_close(&mut a.ws).await.0, Some(close::RESTART));
    let exit = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let log = reader.join().unwrap();
    assert!(
        !log.contains("TOP-SECRET"),
        "a blob reached the log:\n{log}"
    );
    assert!(
        !log.contains("operator-secret"),
        "the TURN secret reached the log"
    );
    assert!(!log.to_lowercase().contains("panic"), "{log}");
}
