//! Every limit of the security guide §2.6 that can be driven from a client (S1–S6).

use std::net::IpAddr;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use skiff_proto::signal::{close, ClientMsg, ErrorCode, SealedBlob, ServerMsg};
use skiff_signal::Config;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;

use crate::util::*;

/// A WebSocket done by hand, to send frames no well-behaved library would.
async fn raw_ws(addr: std::net::SocketAddr) -> TcpStream {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        timeout(WAIT, tcp.read_exact(&mut b))
            .await
            .unwrap()
            .unwrap();
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tcp
}

/// A masked client frame header (+ mask key 0) for `len` payload bytes.
fn frame_header(opcode: u8, len: u64) -> Vec<u8> {
    let mut h = vec![0x80 | opcode];
    if len < 126 {
        h.push(0x80 | len as u8);
    } else if len <= 0xffff {
        h.push(0x80 | 126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(0x80 | 127);
        h.extend_from_slice(&len.to_be_bytes());
    }
    h.extend_from_slice(&[0, 0, 0, 0]);
    h
}

/// Reads server frames until a close frame; returns its code. Counts bytes read.
async fn raw_close_code(tcp: &mut TcpStream) -> Option<u16> {
    loop {
        let mut h = [0u8; 2];
        if timeout(WAIT, tcp.read_exact(&mut h))
            .await
            .unwrap()
            .is_err()
        {
            return None;
        }
        let mut len = u64::from(h[1] & 0x7f);
        if len == 126 {
            let mut b = [0u8; 2];
            tcp.read_exact(&mut b).await.unwrap();
            len = u64::from(u16::from_be_bytes(b));
        } else if len == 127 {
            let mut b = [0u8; 8];
            tcp.read_exact(&mut b).await.unwrap();
            len = u64::from_be_bytes(b);
        }
        let mut payload = vec![0u8; len as usize];
        tcp.read_exact(&mut payload).await.unwrap();
        if h[0] & 0x0f == 0x8 {
            return payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
        }
    }
}

#[tokio::test]
async fn oversized_messages_close_with_1009_without_reading_them() {
    let server = start(roomy()).await;
    // 64 KiB + 1 byte, through a real client.
    let mut c = Client::connect(server.addr, "big").await;
    let blob = "A".repeat(64 * 1024 + 1);
    c.ws.send(Message::text(blob)).await.unwrap();
    assert_eq!(recv_close(&mut c.ws).await.0, Some(close::TOO_BIG));
    // A header announcing 64 MiB: refused from the header, only a few bytes sent.
    let mut tcp = raw_ws(server.addr).await;
    tcp.write_all(&frame_header(0x1, 64 * 1024 * 1024))
        .await
        .unwrap();
    tcp.write_all(b"{\"type\":").await.unwrap();
    assert_eq!(raw_close_code(&mut tcp).await, Some(close::TOO_BIG));
    assert!(
        server
            .metric("skiff_signal_rejections_total{reason=\"too_large\"}")
            .await
            >= 2
    );
    Client::connect(server.addr, "after").await.ping(1).await;
    server.stop().await;
}

#[tokio::test]
async fn bad_input_gets_a_typed_error_or_close_and_the_server_stays_up() {
    let server = start(roomy()).await;
    let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let cases: Vec<String> = vec![
        "{not json".into(),
        r#"{"type":"teleport"}"#.into(),
        r#"{"type":"claim","nameplate":12}"#.into(),
        r#"{"type":"send","to":"p"}"#.into(),
        deep,
    ];
    for case in &cases {
        // Before hello and after hello.
        for after_hello in [false, true] {
            let mut ws = ws_from(server.addr, localhost(), &[]).await.unwrap();
            if after_hello {
                send(&mut ws, &hello("bad", None)).await;
                let _welcome = recv(&mut ws).await;
                let _peers = recv(&mut ws).await;
            }
            ws.send(Message::text(case.clone())).await.unwrap();
            let (code, seen) = recv_close(&mut ws).await;
            assert!(
                matches!(
                    seen.last(),
                    Some(ServerMsg::Error {
                        code: ErrorCode::Malformed,
                        ..
                    })
                ),
                "{case:.40}: {seen:?}"
            );
            assert_eq!(code, Some(close::POLICY));
        }
    }
    // A binary frame, and a message before hello.
    let mut ws = ws_from(server.addr, localhost(), &[]).await.unwrap();
    ws.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let (code, seen) = recv_close(&mut ws).await;
    assert!(matches!(
        seen[..],
        [ServerMsg::Error {
            code: ErrorCode::Malformed,
            ..
        }]
    ));
    assert_eq!(code, Some(close::POLICY));
    let mut ws = ws_from(server.addr, localhost(), &[]).await.unwrap();
    send(&mut ws, &ClientMsg::Allocate).await;
    let (_, seen) = recv_close(&mut ws).await;
    assert!(matches!(
        seen[..],
        [ServerMsg::Error {
            code: ErrorCode::HelloFirst,
            ..
        }]
    ));
    // Invalid UTF-8 in a text frame.
    let mut tcp = raw_ws(server.addr).await;
    let mut frame = frame_header(0x1, 2);
    frame.extend_from_slice(&[0xff, 0xfe]);
    tcp.write_all(&frame).await.unwrap();
    assert_eq!(raw_close_code(&mut tcp).await, Some(close::INVALID_DATA));
    // A bad upgrade.
    assert_eq!(server.get("/ws").await.0, 400);
    Client::connect(server.addr, "still-up").await.ping(2).await;
    server.stop().await;
}

#[tokio::test]
async fn a_flood_is_limited_then_closed_after_three_seconds() {
    let server = start(roomy()).await;
    let mut flooder = Client::connect(server.addr, "flood").await;
    let mut victim = Client::connect(server.addr, "victim").await;
    let _joined = flooder.recv().await;
    let to = victim.peer_id.clone();
    let counter = tokio::spawn(async move {
        let mut got = 0u32;
        while let Ok(Some(Ok(m))) = timeout(Duration::from_secs(1), victim.ws.next()).await {
            if let Message::Text(t) = m {
                if matches!(ServerMsg::decode(t.as_str()), Ok(ServerMsg::Message { .. })) {
                    got += 1;
                }
            }
        }
        got
    });
    let start = Instant::now();
    let msg = Message::text(
        ClientMsg::Send {
            to,
            blob: SealedBlob("x".repeat(100)),
        }
        .encode(),
    );
    let (mut sink, mut stream) = flooder.ws.split();
    let writer = tokio::spawn(async move {
        // ~10 000 msg/s until the server closes (bounded to 6 s).
        while start.elapsed() < Duration::from_secs(6) {
            for _ in 0..100 {
                if sink.feed(msg.clone()).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    let mut errors = Vec::new();
    let code = loop {
        match timeout(Duration::from_secs(8), stream.next())
            .await
            .unwrap()
        {
            Some(Ok(Message::Text(t))) => errors.push(ServerMsg::decode(t.as_str()).unwrap()),
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            _ => break None,
        }
    };
    let elapsed = start.elapsed();
    writer.abort();
    assert_eq!(code, Some(close::POLICY));
    assert!(
        elapsed >= Duration::from_secs(3) && elapsed < Duration::from_secs(5),
        "{elapsed:?}"
    );
    assert!(
        matches!(
            errors[..],
            [ServerMsg::Error {
                code: ErrorCode::RateLimited,
                ..
            }]
        ),
        "{errors:?}"
    );
    let got = counter.await.unwrap();
    let allowed = 50.0 + 20.0 * elapsed.as_secs_f64();
    assert!(
        f64::from(got) <= allowed && got >= 50,
        "victim got {got}, allowed {allowed}"
    );
    assert!(
        server
            .metric("skiff_signal_rejections_total{reason=\"flood\"}")
            .await
            >= 1
    );
    server.stop().await;
}

#[tokio::test]
async fn a_slow_reader_is_dropped_and_others_carry_on() {
    let mut config = roomy();
    config.limits.messages_per_sec = 100_000.0;
    config.limits.message_burst = 100_000.0;
    let server = start(config).await;
    let mut sender = Client::connect(server.addr, "fast").await;
    // The slow reader: tiny receive buffer and it never reads.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let url = format!("ws://{}/ws", server.addr);
    let (mut slow, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    send(&mut slow, &hello("slow", None)).await;
    let ServerMsg::Welcome {
        peer_id: slow_id, ..
    } = recv(&mut slow).await
    else {
        panic!()
    };
    let _peers = recv(&mut slow).await;
    let ServerMsg::PeerJoined { .. } = sender.recv().await else {
        panic!()
    };
    let blob = SealedBlob("B".repeat(60 * 1024));
    let msg = ClientMsg::Send {
        to: slow_id.clone(),
        blob,
    };
    let mut left = false;
    // At most ~40 MiB before the server must have given up (256 KiB queue + socket buffers).
    for _ in 0..700 {
        sender.send(msg.clone()).await;
        if let Ok(Some(Ok(Message::Text(t)))) =
            timeout(Duration::from_millis(1), sender.ws.next()).await
        {
            if ServerMsg::decode(t.as_str()).unwrap()
                == (ServerMsg::PeerLeft {
                    peer_id: slow_id.clone(),
                })
            {
                left = true;
                break;
            }
        }
    }
    if !left {
        loop {
            match sender.recv().await {
                ServerMsg::PeerLeft { peer_id } if peer_id == slow_id => break,
                ServerMsg::Error {
                    code: ErrorCode::UnknownPeer,
                    ..
                } => continue,
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(
        server
            .metric("skiff_signal_rejections_total{reason=\"slow_reader\"}")
            .await
            >= 1
    );
    drain_pongs(&mut sender).await;
    drop(slow);
    server.stop().await;
}

/// Pings until the matching pong arrives, skipping errors queued before it.
async fn drain_pongs(c: &mut Client) {
    c.send(ClientMsg::Ping { id: 77 }).await;
    loop {
        match c.recv().await {
            ServerMsg::Pong { id: 77 } => return,
            ServerMsg::Error {
                code: ErrorCode::UnknownPeer,
                ..
            } => {}
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn twenty_first_socket_from_one_address_is_refused_others_unaffected() {
    let server = start(roomy_except_sockets()).await;
    let ip: IpAddr = "127.0.3.1".parse().unwrap();
    let mut open = Vec::new();
    for i in 0..20 {
        open.push(Client::connect_in(server.addr, &format!("d{i}"), Some("many"), ip).await);
    }
    assert_eq!(ws_from(server.addr, ip, &[]).await.err(), Some(429));
    Client::connect_in(server.addr, "other", None, "127.0.3.2".parse().unwrap())
        .await
        .ping(1)
        .await;
    // The count follows sockets that end: close one and a slot frees up.
    let mut closing = open.pop().unwrap();
    closing.ws.close(None).await.unwrap();
    let _ = recv_close(&mut closing.ws).await;
    let deadline = Instant::now() + WAIT;
    let mut again = None;
    while again.is_none() && Instant::now() < deadline {
        match ws_from(server.addr, ip, &[]).await {
            Ok(ws) => again = Some(ws),
            Err(429) => tokio::time::sleep(Duration::from_millis(10)).await, // the server is still tidying up
            Err(s) => panic!("{s}"),
        }
    }
    assert!(again.is_some());
    assert!(
        server
            .metric("skiff_signal_rejections_total{reason=\"per_ip_sockets\"}")
            .await
            >= 1
    );
    server.stop().await;
}

fn roomy_except_sockets() -> Config {
    let mut c = roomy();
    c.limits.max_sockets_per_ip = 20;
    c
}

#[tokio::test]
async fn eleventh_new_connection_in_a_burst_gets_429() {
    let server = start(Config::default()).await;
    let ip: IpAddr = "127.0.4.1".parse().unwrap();
    for _ in 0..10 {
        let ws = ws_from(server.addr, ip, &[]).await.unwrap();
        drop(ws);
    }
    assert_eq!(ws_from(server.addr, ip, &[]).await.err(), Some(429));
    assert!(ws_from(server.addr, "127.0.4.2".parse().unwrap(), &[])
        .await
        .is_ok());
    assert!(
        server
            .metric("skiff_signal_rejections_total{reason=\"per_ip_rate\"}")
            .await
            >= 1
    );
    server.stop().await;
}

#[tokio::test]
async fn upgrade_or_hello_that_never_comes_is_cut_at_the_deadline() {
    let mut config = roomy();
    config.limits.handshake_timeout_secs = 0.3;
    let server = start(config).await;
    let started = Instant::now();
    // TCP open, nothing sent.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let n = timeout(WAIT, silent.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408") || n == 0);
    // Half a request line.
    let mut slow = TcpStream::connect(server.addr).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let n = timeout(WAIT, slow.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 408") || n == 0);
    // Upgraded, but no hello.
    let mut ws = ws_from(server.addr, localhost(), &[]).await.unwrap();
    assert_eq!(recv_close(&mut ws).await.0, Some(close::POLICY));
    assert!(started.elapsed() < Duration::from_secs(3));
    Client::connect(server.addr, "prompt").await.ping(1).await;
    server.stop().await;
}

#[tokio::test]
async fn global_cap_sheds_new_connections_and_keeps_existing_ones() {
    let mut config = roomy();
    config.limits.max_connections = 3;
    let server = start(config).await;
    let mut a = Client::connect(server.addr, "a").await;
    let _b = Client::connect(server.addr, "b").await;
    let mut c = ws_from(server.addr, localhost(), &[]).await.unwrap();
    let mut shed = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 16];
    let n = timeout(WAIT, shed.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0, "over the cap the connection is closed at once");
    let _joined = a.recv().await;
    a.ping(3).await;
    // Once a slot frees up, new connections are served again.
    c.close(None).await.unwrap();
    let _ = recv_close(&mut c).await;
    let full = "skiff_signal_rejections_total{reason=\"server_full\"} ";
    let counted = eventually(|| async {
        try_http_get(server.addr, "/metrics")
            .await
            .is_some_and(|(_, body)| {
                body.lines()
                    .any(|l| l.strip_prefix(full).is_some_and(|v| v != "0"))
            })
    })
    .await;
    assert!(counted);
    server.stop().await;
}

#[tokio::test]
async fn a_ping_flood_counts_against_the_rate_too() {
    let mut config = roomy();
    config.limits.flood_close_after_secs = 0.5;
    let server = start(config).await;
    let c = Client::connect(server.addr, "pinger").await;
    let (mut sink, mut stream) = c.ws.split();
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        while started.elapsed() < Duration::from_secs(5) {
            for _ in 0..50 {
                if sink.feed(Message::Ping(Default::default())).await.is_err() {
                    return;
                }
            }
            if sink.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let code = loop {
        match timeout(WAIT, stream.next()).await.unwrap() {
            Some(Ok(Message::Close(f))) => break f.map(|f| u16::from(f.code)),
            Some(Ok(_)) => {}
            _ => break None,
        }
    };
    writer.abort();
    assert_eq!(code, Some(close::POLICY));
    assert!(started.elapsed() < Duration::from_secs(3));
    server.stop().await;
}
