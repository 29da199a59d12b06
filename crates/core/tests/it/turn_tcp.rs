//! The TURN TCP relay (`skiff_core::transport::turn_tcp`, RFC 6062) against a real coturn
//! on loopback, started by each test with UDP switched off entirely (`--no-udp
//! --no-udp-relay --no-dtls`): what a peer behind a UDP-blocking firewall gets. Credentials
//! are coturn's REST-style ephemeral ones (`use-auth-secret`), as the signaling server
//! mints them. Where coturn is not installed the tests are skipped, except under `CI`.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use skiff_core::transport::turn_tcp::{dial, public_addr, TcpAllocation, TurnServer, HELLO};
use skiff_core::transport::{Conn, PathKind};
use skiff_core::Error;
use skiff_proto::frame::MAX_FRAME;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::util::within;

pub(crate) const SECRET: &str = "turn-tcp-secret";
const REALM: &str = "skiff.test";

/// A coturn (`turnserver`) on loopback ports, TCP and TLS listeners only, killed on drop.
/// Its log is printed when the test failed.
pub(crate) struct Coturn {
    child: Child,
    pub(crate) port: u16,
    tls_port: u16,
    cert_pem: String,
    dir: PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            if let Ok(log) = std::fs::read_to_string(self.dir.join("turn.log")) {
                let tail: Vec<&str> = log.lines().rev().take(60).collect();
                eprintln!("--- coturn log (last lines) ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Coturn {
    /// None (and a note) when coturn is not installed; a panic then if `CI` is set.
    /// `slot` picks a relay port range of its own, so tests can run side by side.
    pub(crate) async fn start(slot: u16, extra: &[&str]) -> Option<Coturn> {
        let Some(bin) = ["/usr/bin/turnserver", "/usr/local/bin/turnserver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must install coturn (scripts/setup-system.sh: apt-get install coturn)"
            );
            eprintln!("SKIPPED: coturn is not installed (apt-get install coturn)");
            return None;
        };
        let (port, tls_port) = (free_port(), free_port());
        let dir = std::env::temp_dir().join(format!(
            "skiff-turn-tcp-{}-{slot}-{port}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        // A leaf certificate (not a CA: webpki refuses a CA as the server's own
        // certificate) for 127.0.0.1, which the client trusts as an extra root.
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        let min = 52000 + slot * 100;
        let child = Command::new(bin)
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .arg(format!("--tls-listening-port={tls_port}"))
            .arg(format!("--realm={REALM}"))
            .args([
                "--use-auth-secret",
                &format!("--static-auth-secret={SECRET}"),
            ])
            // What a UDP-blocked network leaves: TCP and TLS only, TCP relays (RFC 6062).
            .args(["--no-udp", "--no-udp-relay", "--no-dtls", "--fingerprint"])
            // The test's peers are on 127.0.0.1.
            .args(["--allow-loopback-peers", "--no-cli", "--no-multicast-peers"])
            .arg(format!("--cert={}", dir.join("cert.pem").display()))
            .arg(format!("--pkey={}", dir.join("key.pem").display()))
            .arg(format!("--min-port={min}"))
            .arg(format!("--max-port={}", min + 99))
            .arg(format!("--pidfile={}", dir.join("pid").display()))
            .arg(format!("--db={}", dir.join("turndb").display()))
            .arg(format!("--log-file={}", dir.join("turn.log").display()))
            .args(["--simple-log", "--verbose"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start coturn");
        let turn = Coturn {
            child,
            port,
            tls_port,
            cert_pem: cert.pem(),
            dir,
        };
        let t0 = Instant::now();
        for p in [port, tls_port] {
            while tokio::net::TcpStream::connect(("127.0.0.1", p))
                .await
                .is_err()
            {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "coturn did not start"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Some(turn)
    }

    /// REST API credentials (`<expiry>:<id>`, base64 HMAC-SHA1), as skiff-signal mints.
    fn server(&self, url: String, ttl: i64) -> TurnServer {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let username = format!("{}:turn-tcp-test", now + ttl);
        let credential = password(SECRET, &username);
        TurnServer::new(url, username, credential)
    }

    fn tcp(&self) -> TurnServer {
        self.server(format!("turn:127.0.0.1:{}?transport=tcp", self.port), 3600)
    }

    fn tls(&self) -> TurnServer {
        TurnServer {
            extra_roots_pem: Some(self.cert_pem.clone()),
            ..self.server(format!("turns:127.0.0.1:{}", self.tls_port), 3600)
        }
    }
}

fn password(secret: &str, username: &str) -> String {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

fn data(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block: [u8; 32] = Sha256::digest([seed]).into();
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block).into();
    }
    out.truncate(len);
    out
}

/// Allocation (permitting the dialer's public IP as the TURN server reports it), then the
/// dialer and the accepting allocator concurrently.
async fn connect(alloc: &TcpAllocation, server: &TurnServer) -> (Conn, Conn) {
    let me = within("public address", public_addr(server)).await.unwrap();
    assert_eq!(me.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    within("permit", alloc.permit(me.ip())).await.unwrap();
    let relayed = alloc.relayed_addr();
    let (a, b) = within("accept + dial", async {
        tokio::join!(alloc.accept(), dial(relayed))
    })
    .await;
    (a.unwrap(), b.unwrap())
}

/// `frames` frames of `size` bytes from `tx` to `rx` while `rx` answers every frame
/// with a small message, as Skiff's credit flow does; every byte checked.
async fn bulk(tx: &mut Conn, rx: &mut Conn, frames: usize, size: usize, seed: u8) {
    let Conn {
        sink: tx_sink,
        stream: tx_stream,
        ..
    } = tx;
    let Conn {
        sink: rx_sink,
        stream: rx_stream,
        ..
    } = rx;
    let send = async {
        for i in 0..frames {
            tx_sink
                .send(data(size, seed.wrapping_add(i as u8)))
                .await
                .unwrap();
        }
    };
    let recv_and_ack = async {
        for i in 0..frames {
            let f = rx_stream.recv(MAX_FRAME).await.unwrap().expect("frame");
            assert_eq!(f.len(), size, "frame #{i}");
            assert!(
                f == data(size, seed.wrapping_add(i as u8)),
                "frame #{i} corrupted"
            );
            rx_sink
                .send((i as u64).to_be_bytes().to_vec())
                .await
                .unwrap();
        }
    };
    let acks = async {
        for i in 0..frames {
            let ack = tx_stream.recv(MAX_FRAME).await.unwrap().expect("ack");
            assert_eq!(ack, (i as u64).to_be_bytes(), "ack #{i}");
        }
    };
    within("bulk transfer", async {
        tokio::join!(send, recv_and_ack, acks)
    })
    .await;
}

/// Bulk one way, then the other, each byte for byte.
async fn exchange(a: &mut Conn, b: &mut Conn, frames: usize, size: usize) {
    bulk(a, b, frames, size, 0).await;
    bulk(b, a, frames, size, 128).await;
}

/// Closing is per direction, as on plain TCP: after `a` closes, `b` reads the rest and
/// then the end, and can still talk back until it closes too.
async fn close_both(a: &mut Conn, b: &mut Conn) {
    within("close", async {
        a.sink.send(data(300_000, 1)).await.unwrap();
        a.sink.close().await.unwrap();
        assert!(matches!(
            a.sink.send(vec![1]).await,
            Err(Error::ConnectionClosed)
        ));
        assert!(b.stream.recv(MAX_FRAME).await.unwrap().unwrap() == data(300_000, 1));
        assert!(b.stream.recv(MAX_FRAME).await.unwrap().is_none());
        assert!(b.stream.recv(MAX_FRAME).await.unwrap().is_none());
        b.sink.send(data(5, 2)).await.unwrap();
        assert_eq!(a.stream.recv(MAX_FRAME).await.unwrap().unwrap(), data(5, 2));
        b.sink.close().await.unwrap();
        assert!(a.stream.recv(MAX_FRAME).await.unwrap().is_none());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_relay_carries_32_mib_each_way_and_reports_turn_tcp() {
    let Some(turn) = Coturn::start(0, &[]).await else {
        return;
    };
    let server = turn.tcp();
    let alloc = within("allocate", TcpAllocation::allocate(&server))
        .await
        .unwrap();
    let relayed = alloc.relayed_addr();
    assert_eq!(relayed.ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert!(
        (52000..52100).contains(&relayed.port()),
        "relayed port {relayed} outside coturn's range"
    );
    assert_eq!(
        alloc.mapped_addr().map(|a| a.ip()),
        Some(IpAddr::V4(Ipv4Addr::LOCALHOST))
    );
    let (mut a, mut b) = connect(&alloc, &server).await;
    for c in [&a, &b] {
        assert_eq!(c.path, PathKind::TurnTcp);
        assert_eq!(c.path.as_str(), "turn-tcp");
    }
    assert!(
        a.remote
            .contains(&format!("via TURN 127.0.0.1:{}", turn.port)),
        "{}",
        a.remote
    );
    assert_eq!(b.remote, format!("TURN relay {relayed}"));
    let t0 = Instant::now();
    exchange(&mut a, &mut b, 32, 1 << 20).await;
    println!("turn-tcp: 2 × 32 MiB through coturn in {:?}", t0.elapsed());
    // Sizes around the edges still frame correctly.
    for n in [0, 1, HELLO.len(), MAX_FRAME] {
        let (sent, got) = within("edge frame", async {
            tokio::join!(a.sink.send(data(n, 9)), b.stream.recv(MAX_FRAME))
        })
        .await;
        sent.unwrap();
        assert!(got.unwrap().unwrap() == data(n, 9), "{n}-byte frame");
    }
    // A second dialer gets its own bound connection on the same allocation.
    let (mut a2, mut b2) = connect(&alloc, &server).await;
    exchange(&mut a2, &mut b2, 2, 1000).await;
    close_both(&mut a, &mut b).await;
    close_both(&mut a2, &mut b2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_the_turn_server_reports_turn_tls_and_verifies_the_certificate() {
    let Some(turn) = Coturn::start(1, &[]).await else {
        return;
    };
    let server = turn.tls();
    let alloc = within("allocate over TLS", TcpAllocation::allocate(&server))
        .await
        .unwrap();
    let (mut a, mut b) = connect(&alloc, &server).await;
    // The allocator reached the server over TLS; the dialer's leg is plain TCP.
    assert_eq!(a.path, PathKind::TurnTls);
    assert_eq!(a.path.as_str(), "turn-tls");
    assert_eq!(b.path, PathKind::TurnTcp);
    exchange(&mut a, &mut b, 8, 1 << 20).await;
    close_both(&mut a, &mut b).await;

    // Without the extra root the self-signed certificate is refused: never "accept any".
    let untrusted = TurnServer {
        extra_roots_pem: None,
        ..turn.tls()
    };
    let e = within("untrusted", TcpAllocation::allocate(&untrusted))
        .await
        .unwrap_err();
    assert_eq!(e.code(), "io", "{e:?}");
    let chain = format!("{e}: {:?}", std::error::Error::source(&e));
    assert!(
        chain.contains("TLS") && chain.contains("UnknownIssuer"),
        "{chain}"
    );
    assert!(within("untrusted", public_addr(&untrusted)).await.is_err());
    // A root that is not a certificate is a configuration error, not a silent skip.
    let garbage = TurnServer {
        extra_roots_pem: Some("not a certificate".into()),
        ..turn.tls()
    };
    let e = TcpAllocation::allocate(&garbage).await.unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_expired_credentials_are_refused_with_401() {
    let Some(turn) = Coturn::start(2, &[]).await else {
        return;
    };
    for server in [
        TurnServer {
            credential: "AAAAAAAAAAAAAAAAAAAAAAAAAAA=".into(),
            ..turn.tcp()
        },
        turn.server(format!("turn:127.0.0.1:{}?transport=tcp", turn.port), -60),
        TurnServer {
            credential: "Zm9vYmFyYmF6cXV4".into(),
            ..turn.tls()
        },
    ] {
        let e = within("allocate", TcpAllocation::allocate(&server))
            .await
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::TurnRefused {
                    what: "allocation",
                    code: 401,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.code(), "turn_refused");
        let msg = e.to_string();
        assert!(
            msg.starts_with("TURN server refused the allocation: 401"),
            "{msg}"
        );
        assert!(!msg.contains(&server.credential), "credential in {msg}");
    }
    // A UDP URL is not silently used over TCP.
    let udp = TurnServer {
        url: format!("turn:127.0.0.1:{}?transport=udp", turn.port),
        ..turn.tcp()
    };
    let e = TcpAllocation::allocate(&udp).await.unwrap_err();
    assert_eq!(e.code(), "invalid_input", "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dialer_without_permission_is_never_bound_and_fails_fast() {
    let Some(turn) = Coturn::start(3, &[]).await else {
        return;
    };
    let server = turn.tcp();
    let alloc = within("allocate", TcpAllocation::allocate(&server))
        .await
        .unwrap();
    // No permission at all, then one for a different address: the dialer (127.0.0.1)
    // is turned away by the server each time, and the allocator hears of nobody.
    for permit in [None, Some(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)))] {
        if let Some(ip) = permit {
            alloc.permit(ip).await.unwrap();
        }
        let t0 = Instant::now();
        let (accepted, dialed) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(3), alloc.accept()),
            within("unpermitted dial", dial(alloc.relayed_addr())),
        );
        let Err(e) = dialed else {
            panic!("an unpermitted dialer must not get a connection")
        };
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "took {:?}: {e}",
            t0.elapsed()
        );
        assert!(e.to_string().contains("no TURN permission"), "{e}");
        assert!(
            accepted.is_err(),
            "the allocator must not see the connection"
        );
    }
    // The allocation is unharmed: permitting the dialer now works.
    let (mut a, mut b) = connect(&alloc, &server).await;
    exchange(&mut a, &mut b, 1, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_and_stale_nonces_keep_an_idle_allocation_usable() {
    // The allocation and permissions would lapse after 6 s, nonces after 3 s.
    let Some(turn) = Coturn::start(
        4,
        &[
            "--max-allocate-lifetime=6",
            "--permission-lifetime=6",
            "--stale-nonce=3",
        ],
    )
    .await
    else {
        return;
    };
    let server = turn.tcp();
    let alloc = within("allocate", TcpAllocation::allocate(&server))
        .await
        .unwrap();
    assert_eq!(alloc.lifetime(), Duration::from_secs(6));
    let me = public_addr(&server).await.unwrap();
    alloc.permit(me.ip()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(14)).await;
    // Still permitted and alive well past both lifetimes; a new data connection's
    // ConnectionBind gets through a fresh nonce.
    let (mut a, mut b) = within("accept + dial", async {
        tokio::join!(alloc.accept(), dial(alloc.relayed_addr()))
    })
    .await;
    let (a, b) = (a.as_mut().unwrap(), b.as_mut().unwrap());
    exchange(a, b, 2, 1 << 16).await;
    // And a connection stays usable across further refreshes.
    tokio::time::sleep(Duration::from_secs(8)).await;
    exchange(a, b, 2, 1 << 16).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conns_keep_the_allocation_alive_and_the_last_drop_ends_it() {
    let Some(turn) = Coturn::start(5, &[]).await else {
        return;
    };
    let server = turn.tcp();
    let alloc = within("allocate", TcpAllocation::allocate(&server))
        .await
        .unwrap();
    let (mut a, mut b) = connect(&alloc, &server).await;
    let (relayed, tasks) = (alloc.relayed_addr(), alloc.tasks());
    drop(alloc);
    // The accepted connection still holds the allocation (and its refresh task).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!tasks.is_empty());
    exchange(&mut a, &mut b, 2, 1 << 20).await;
    drop(a);
    within("allocation tasks end", tasks.wait()).await;
    // coturn deletes the allocation with its control connection: the dialer's leg ends…
    let end = within("dialer sees the end", b.stream.recv(MAX_FRAME)).await;
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
    // …and nobody can be relayed to that address any more.
    assert!(within("dial a dead relay", dial(relayed)).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_connection_that_does_not_speak_skiff_is_not_accepted() {
    let Some(turn) = Coturn::start(6, &[]).await else {
        return;
    };
    let server = turn.tcp();
    let alloc = within("allocate", TcpAllocation::allocate(&server))
        .await
        .unwrap();
    alloc.permit(IpAddr::V4(Ipv4Addr::LOCALHOST)).await.unwrap();
    // Something from a permitted address that answers the allocator's hello with
    // garbage is dropped; accept keeps waiting and takes the real dialer that comes next.
    let relayed = alloc.relayed_addr();
    let (a, b) = within("accept + rogue + dial", async {
        tokio::join!(alloc.accept(), async {
            let mut rogue = tokio::net::TcpStream::connect(relayed).await.unwrap();
            let mut hello = [0u8; 16];
            rogue.read_exact(&mut hello).await.unwrap();
            assert_eq!(&hello, HELLO);
            rogue.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
            // The allocator closes the rogue's connection.
            let mut rest = Vec::new();
            let _ = rogue.read_to_end(&mut rest).await;
            assert!(rest.is_empty(), "{rest:?}");
            dial(relayed).await
        })
    })
    .await;
    let (mut a, mut b) = (a.unwrap(), b.unwrap());
    exchange(&mut a, &mut b, 1, 10).await;
}
