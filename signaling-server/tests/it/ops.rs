//! Operations: /healthz, /metrics, graceful shutdown, TLS, and the real binary.

use skiff_proto::signal::close;

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
