//! The WebRTC transport (`skiff_core::transport::webrtc`): two peers in one process on
//! 127.0.0.1 host candidates, signaling through an in-memory pipe (optionally tampering),
//! over the real webrtc 0.21.1 stack.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use skiff_proto::code::ShareCode;
use skiff_proto::frame::{COUNTER_LEN, MAX_FRAME};
use skiff_proto::handshake::DialHello;
use tokio::sync::mpsc;

use skiff_core::session;
use skiff_core::transport::webrtc::{
    connect, CandidateKind, RelayProtocol, RtcConfig, RtcConn, RtcRole, RtcSignal, MESSAGE_SIZE,
};
use skiff_core::transport::{Conn, PathKind};
use skiff_core::{Error, Result};

const WAIT: Duration = Duration::from_secs(30);

fn loopback() -> RtcConfig {
    RtcConfig {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        ..RtcConfig::default()
    }
}

type Tamper = Arc<dyn Fn(RtcSignal) -> RtcSignal + Send + Sync>;

/// Forwards signals from one side to the other, recording them and passing each through
/// `tamper`. Ends when either end closes.
fn relay(
    mut from: mpsc::Receiver<RtcSignal>,
    to: mpsc::Sender<RtcSignal>,
    log: Arc<Mutex<Vec<RtcSignal>>>,
    tamper: Tamper,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(s) = from.recv().await {
            log.lock().unwrap().push(s.clone());
            if to.send(tamper(s)).await.is_err() {
                break;
            }
        }
    })
}

struct Pair {
    offerer: Result<RtcConn>,
    answerer: Result<RtcConn>,
    /// Signals the offerer sent, then the ones the answerer sent.
    sent: [Arc<Mutex<Vec<RtcSignal>>>; 2],
}

async fn connect_pair(cfg: &RtcConfig, timeout: Duration, tamper: Tamper) -> Pair {
    let (a_out, a_out_rx) = mpsc::channel(64);
    let (b_out, b_out_rx) = mpsc::channel(64);
    let (a_in_tx, a_in) = mpsc::channel(64);
    let (b_in_tx, b_in) = mpsc::channel(64);
    let sent = [Arc::default(), Arc::default()];
    let r1 = relay(a_out_rx, b_in_tx, Arc::clone(&sent[0]), tamper.clone());
    let r2 = relay(b_out_rx, a_in_tx, Arc::clone(&sent[1]), tamper);
    let (offerer, answerer) = tokio::join!(
        connect(RtcRole::Offerer, cfg, a_out, a_in, timeout),
        connect(RtcRole::Answerer, cfg, b_out, b_in, timeout),
    );
    r1.abort();
    r2.abort();
    Pair {
        offerer,
        answerer,
        sent,
    }
}

async fn pair() -> (RtcConn, RtcConn) {
    let p = connect_pair(&loopback(), WAIT, Arc::new(|s| s)).await;
    (p.offerer.unwrap(), p.answerer.unwrap())
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

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, f)
        .await
        .unwrap_or_else(|_| panic!("timed out: {what}"))
}

fn sdp_fingerprint(sdp: &str) -> String {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=fingerprint:sha-256 "))
        .expect("fingerprint line")
        .trim()
        .to_ascii_lowercase()
}

fn colon_hex(fp: &[u8; 32]) -> String {
    fp.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_with_trickle_and_reports_what_dtls_and_ice_used() {
    let p = connect_pair(&loopback(), WAIT, Arc::new(|s| s)).await;
    let a = p.offerer.unwrap();
    let b = p.answerer.unwrap();
    // Each side saw exactly the certificate the other presented…
    assert_eq!(a.local_fingerprint, b.remote_fingerprint);
    assert_eq!(b.local_fingerprint, a.remote_fingerprint);
    assert_ne!(a.local_fingerprint, b.local_fingerprint);
    assert_eq!(a.fingerprints_by_role(), b.fingerprints_by_role());
    // …and it is the one its SDP announced.
    let offer = p.sent[0].lock().unwrap().clone();
    let answer = p.sent[1].lock().unwrap().clone();
    let RtcSignal::Offer(offer_sdp) = &offer[0] else {
        panic!("offerer did not start with an offer: {offer:?}")
    };
    let RtcSignal::Answer(answer_sdp) = &answer[0] else {
        panic!("answerer did not start with an answer: {answer:?}")
    };
    assert_eq!(sdp_fingerprint(offer_sdp), colon_hex(&a.local_fingerprint));
    assert_eq!(sdp_fingerprint(answer_sdp), colon_hex(&b.local_fingerprint));
    // Trickle: candidates travel as separate messages after the SDP.
    for sent in [&offer, &answer] {
        assert!(
            sent[1..]
                .iter()
                .any(|s| matches!(s, RtcSignal::Candidate(c) if c.contains("127.0.0.1"))),
            "no trickled loopback candidate in {sent:?}"
        );
    }
    assert!(!offer_sdp.contains(".local"), "mDNS must be off");
    for c in [&a, &b] {
        assert_eq!(c.pair.local, CandidateKind::Host, "{:?}", c.pair);
        assert_eq!(c.conn.path, PathKind::Lan);
        assert!(
            c.conn.remote.starts_with("webrtc:127.0.0.1:"),
            "{}",
            c.conn.remote
        );
        assert!(c.udp_rcvbuf > 0 && c.udp_sndbuf > 0);
    }
    println!(
        "setup {:?} / {:?}; udp rcvbuf {} sndbuf {} (reported)",
        a.setup_time, b.setup_time, a.udp_rcvbuf, a.udp_sndbuf
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_of_all_sizes_arrive_intact_and_in_order_both_ways() {
    let (a, b) = pair().await;
    let sizes = [
        0,
        1,
        MESSAGE_SIZE - 1,
        MESSAGE_SIZE,
        MESSAGE_SIZE + 1,
        1 << 20,
        MAX_FRAME,
        0,
        7,
    ];
    let Conn {
        sink: mut a_tx,
        stream: mut a_rx,
        ..
    } = a.conn;
    let Conn {
        sink: mut b_tx,
        stream: mut b_rx,
        ..
    } = b.conn;
    let send_a = async {
        for (i, n) in sizes.iter().enumerate() {
            a_tx.send(data(*n, i as u8)).await.unwrap();
        }
    };
    let send_b = async {
        for (i, n) in sizes.iter().rev().enumerate() {
            b_tx.send(data(*n, 100 + i as u8)).await.unwrap();
        }
    };
    let recv_b = async {
        for (i, n) in sizes.iter().enumerate() {
            let f = b_rx.recv(MAX_FRAME).await.unwrap().expect("frame");
            assert_eq!(f.len(), *n, "frame #{i}");
            assert!(f == data(*n, i as u8), "frame #{i} corrupted");
        }
    };
    let recv_a = async {
        for (i, n) in sizes.iter().rev().enumerate() {
            let f = a_rx.recv(MAX_FRAME).await.unwrap().expect("frame");
            assert_eq!(f.len(), *n, "frame #{i}");
            assert!(f == data(*n, 100 + i as u8), "frame #{i} corrupted");
        }
    };
    within("exchanging frames", async {
        tokio::join!(send_a, send_b, recv_a, recv_b)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_over_max_is_refused() {
    let (mut a, mut b) = pair().await;
    let big = data(2 << 20, 1);
    let send = a.conn.sink.send(big);
    let recv = b.conn.stream.recv(1 << 20);
    let (s, r) = within("oversize", async { tokio::join!(send, recv) }).await;
    s.unwrap();
    assert!(
        matches!(r, Err(Error::FrameTooLarge { len, max }) if len == 2 << 20 && max == 1 << 20),
        "{r:?}"
    );
    // The stream is unusable after a refusal: it does not try to resync.
    assert!(b.conn.stream.recv(MAX_FRAME).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_is_clean_both_ways_and_nothing_outlives_the_conn() {
    let (mut a, mut b) = pair().await;
    let (a_tasks, b_tasks) = (a.tasks(), b.tasks());
    // The offerer sends, closes its direction; the answerer still talks back.
    a.conn.sink.send(data(300_000, 1)).await.unwrap();
    within("close a", a.conn.sink.close()).await.unwrap();
    assert!(matches!(
        a.conn.sink.send(vec![1]).await,
        Err(Error::ConnectionClosed)
    ));
    let f = within("recv", b.conn.stream.recv(MAX_FRAME)).await.unwrap();
    assert_eq!(f.unwrap(), data(300_000, 1));
    assert!(within("fin", b.conn.stream.recv(MAX_FRAME))
        .await
        .unwrap()
        .is_none());
    assert!(b.conn.stream.recv(MAX_FRAME).await.unwrap().is_none());
    b.conn.sink.send(data(5, 2)).await.unwrap();
    within("close b", b.conn.sink.close()).await.unwrap();
    let f = within("recv a", a.conn.stream.recv(MAX_FRAME))
        .await
        .unwrap();
    assert_eq!(f.unwrap(), data(5, 2));
    assert!(within("fin a", a.conn.stream.recv(MAX_FRAME))
        .await
        .unwrap()
        .is_none());
    // Dropping the Conns stops every task: driver, polling task, supervisor.
    drop(a);
    drop(b);
    within("a's tasks", a_tasks.wait()).await;
    within("b's tasks", b_tasks.wait()).await;
    assert!(a_tasks.is_empty() && b_tasks.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_vanishes_without_fin_is_an_error_not_a_clean_close() {
    let (a, mut b) = pair().await;
    let a_tasks = a.tasks();
    drop(a);
    within("a's tasks", a_tasks.wait()).await;
    let r = within("b notices", b.conn.stream.recv(MAX_FRAME)).await;
    assert!(matches!(r, Err(Error::ConnectionClosed)), "{r:?}");
    assert!(b.conn.sink.send(vec![1; 10]).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_sdp_fingerprint_fails_the_dtls_handshake() {
    // What a tampering signaling server would do without the PAKE seal: swap the offer's
    // fingerprint. The DTLS stack checks the certificate it sees against the SDP.
    let tamper: Tamper = Arc::new(|s| match s {
        RtcSignal::Offer(sdp) => {
            let fp = sdp_fingerprint(&sdp);
            let fake = colon_hex(&[0xab; 32]);
            RtcSignal::Offer(sdp.replace(&fp, &fake).replace(&fp.to_uppercase(), &fake))
        }
        other => other,
    });
    let started = Instant::now();
    let p = connect_pair(&loopback(), Duration::from_secs(25), tamper).await;
    let elapsed = started.elapsed();
    for (side, r) in [("offerer", &p.offerer), ("answerer", &p.answerer)] {
        match r {
            Err(Error::Protocol { reason }) => assert!(reason.contains("DTLS"), "{side}: {reason}"),
            other => panic!(
                "{side}: expected a DTLS failure, got {:?}",
                other.as_ref().err()
            ),
        }
    }
    // Both sides say so before the connect timeout: the verifying side when its DTLS stack
    // gives up (about 8 s on webrtc 0.21.1), the other 5 s later when ICE goes quiet.
    assert!(elapsed < Duration::from_secs(19), "{elapsed:?}");
    println!("refused in {elapsed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_peer_is_a_timeout() {
    let (out, _peer_rx) = mpsc::channel(64);
    let (_peer_tx, inp) = mpsc::channel(64);
    let r = connect(
        RtcRole::Offerer,
        &loopback(),
        out,
        inp,
        Duration::from_millis(500),
    )
    .await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_engine_handshake_and_sealed_channel_run_over_webrtc_unchanged() {
    let (a, b) = pair().await;
    // The receiver dials (offerer here), the sender accepts.
    let code = ShareCode::parse("42-river-olive-kitten").unwrap();
    let dial_code = code.clone();
    let dial = tokio::spawn(async move { session::dial_pake(a.conn, &dial_code).await });
    let mut sender_conn = b.conn;
    let hello = within("hello", session::read_hello(&mut sender_conn))
        .await
        .unwrap();
    let DialHello::Pake { msg, .. } = hello else {
        panic!("not a PAKE hello")
    };
    let (mut s, s_secret) = within("accept", session::accept_pake(sender_conn, &code, &msg))
        .await
        .unwrap();
    let (mut r, r_secret) = within("dial", dial).await.unwrap().unwrap();
    assert_eq!(s_secret, r_secret);
    assert_eq!(s.path, PathKind::Lan);
    s.tx.send_control(b"hello over webrtc").await.unwrap();
    let big = data(4 << 20, 9);
    let mut frame = session::frame_buffer(big.len() + 1);
    frame.push(skiff_proto::frame::KIND_CONTROL);
    frame.extend_from_slice(&big);
    s.tx.send_frame(frame).await.unwrap();
    let f = within("control", r.rx.recv()).await.unwrap().unwrap();
    assert_eq!(&f[COUNTER_LEN..], b"\x01hello over webrtc");
    let f = within("big", r.rx.recv()).await.unwrap().unwrap();
    assert!(f[COUNTER_LEN + 1..] == big[..]);
    r.tx.send_control(b"done").await.unwrap();
    let f = within("reply", s.rx.recv()).await.unwrap().unwrap();
    assert_eq!(&f[COUNTER_LEN..], b"\x01done");
    s.tx.close().await;
    assert!(within("eof", r.rx.recv()).await.unwrap().is_none());
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    assert_eq!(rc, 0);
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let names = lines.next()?.split_whitespace().collect::<Vec<_>>();
    let values = lines.next()?.split_whitespace().collect::<Vec<_>>();
    let i = names.iter().position(|n| *n == "RcvbufErrors")?;
    values.get(i)?.parse().ok()
}

/// Not a timed test: `cargo test -p skiff-core --test it webrtc::throughput -- --ignored
/// --nocapture` (SKIFF_RTC_MIB sets the size, default 512).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run by hand"]
async fn throughput() {
    let mib: usize = std::env::var("SKIFF_RTC_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let (a, b) = pair().await;
    println!(
        "setup {:?}; udp rcvbuf {} sndbuf {} (reported by the kernel)",
        a.setup_time, a.udp_rcvbuf, a.udp_sndbuf
    );
    let Conn { sink: mut tx, .. } = a.conn;
    let Conn { stream: mut rx, .. } = b.conn;
    let chunk = data(1 << 20, 3);
    let total = mib << 20;
    let drops0 = udp_rcvbuf_errors();
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let send = async {
        for _ in 0..mib {
            tx.send(chunk.clone()).await.unwrap();
        }
        tx.close().await.unwrap();
    };
    let recv = async {
        let mut got = 0usize;
        while let Some(f) = rx.recv(MAX_FRAME).await.unwrap() {
            got += f.len();
            assert!(f == chunk, "frame corrupted");
        }
        got
    };
    let ((), got) = tokio::join!(send, recv);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    assert_eq!(got, total);
    let drops = udp_rcvbuf_errors().zip(drops0).map(|(b, a)| b - a);
    println!(
        "THROUGHPUT {mib} MiB in {secs:.2} s = {:.1} MB/s; CPU {cpu:.2} s both peers \
         ({:.2} CPU-s/GiB); UDP RcvbufErrors +{drops:?}",
        total as f64 / secs / 1e6,
        cpu / (mib as f64 / 1024.0),
    );
}

/// A coturn (`turnserver`) on a loopback port with one long-term user, killed on drop.
struct Coturn {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Coturn {
    /// None (and a note on stderr) when coturn is not installed.
    fn start() -> Option<Coturn> {
        let Some(bin) = ["/usr/bin/turnserver", "/usr/local/bin/turnserver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
        else {
            eprintln!("coturn not installed: skipping the TURN test");
            return None;
        };
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir =
            std::env::temp_dir().join(format!("skiff-rtc-coturn-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let child = std::process::Command::new(bin)
            .args(["-n", "--listening-ip=127.0.0.1", "--relay-ip=127.0.0.1"])
            .arg(format!("--listening-port={port}"))
            .args([
                "--lt-cred-mech",
                "--user=skiff:s3cret",
                "--realm=skiff.test",
            ])
            // Both relayed addresses are on 127.0.0.1: let coturn relay between them.
            .args([
                "--allow-loopback-peers",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
            ])
            .args(["--min-port=51000", "--max-port=51500"])
            .arg(format!("--pidfile={}", dir.join("pid").display()))
            .arg(format!("--db={}", dir.join("turndb").display()))
            .args(["--log-file=stdout", "--simple-log"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .ok()?;
        Some(Coturn { child, port, dir })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_goes_through_turn_and_reports_turn_udp() {
    let Some(turn) = Coturn::start() else {
        return;
    };
    // Give coturn a moment to bind.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cfg = RtcConfig {
        ice_servers: vec![skiff_core::transport::webrtc::IceServer {
            urls: vec![format!("turn:127.0.0.1:{}?transport=udp", turn.port)],
            username: "skiff".to_owned(),
            credential: "s3cret".to_owned(),
        }],
        relay_only: true,
        ..loopback()
    };
    let p = connect_pair(&cfg, WAIT, Arc::new(|s| s)).await;
    let mut a = p.offerer.unwrap();
    let mut b = p.answerer.unwrap();
    for c in [&a, &b] {
        assert_eq!(
            c.pair.local,
            CandidateKind::Relay(RelayProtocol::Udp),
            "{:?}",
            c.pair
        );
        assert!(matches!(c.pair.remote, CandidateKind::Relay(_)));
        assert_eq!(c.conn.path, PathKind::TurnUdp);
        assert_eq!(c.conn.path.as_str(), "turn-udp");
    }
    // A small frame: this test is about the path. (A 1 MiB burst through coturn on a
    // loaded loopback took 1–25 s — drops at coturn and SCTP's retransmission timer — and
    // once ran past the 30 s wait in CI; throughput is the benchmark's business.)
    let f = data(128 << 10, 4);
    let sent = std::time::Instant::now();
    a.conn.sink.send(f.clone()).await.unwrap();
    let got = within("via turn", b.conn.stream.recv(MAX_FRAME)).await;
    println!("128 KiB through TURN in {:?}", sent.elapsed());
    assert!(got.unwrap().unwrap() == f);
    // No 2 s relay acceptance wait when only relays can exist.
    assert!(a.setup_time < Duration::from_secs(10), "{:?}", a.setup_time);
    println!("relayed setup {:?}: {:?}", a.setup_time, a.pair);
}

/// Not a timed test: the engine's sealed channel (PAKE session, AES-256-GCM per frame)
/// over WebRTC, 1 MiB frames. `cargo test -p skiff-core --test it webrtc::throughput_sealed
/// -- --ignored --nocapture` (SKIFF_RTC_MIB, default 512).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark; run by hand"]
async fn throughput_sealed() {
    let mib: usize = std::env::var("SKIFF_RTC_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(512);
    let (a, b) = pair().await;
    let code = ShareCode::parse("42-river-olive-kitten").unwrap();
    let dial_code = code.clone();
    let dial = tokio::spawn(async move { session::dial_pake(a.conn, &dial_code).await });
    let mut sender_conn = b.conn;
    let DialHello::Pake { msg, .. } = session::read_hello(&mut sender_conn).await.unwrap() else {
        panic!("not a PAKE hello")
    };
    let (mut s, _) = session::accept_pake(sender_conn, &code, &msg)
        .await
        .unwrap();
    let (mut r, _) = dial.await.unwrap().unwrap();
    let body = data(1 << 20, 5);
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    let send = async {
        for _ in 0..mib {
            let mut frame = session::frame_buffer(body.len() + 1);
            frame.push(skiff_proto::frame::KIND_CONTROL);
            frame.extend_from_slice(&body);
            s.tx.send_frame(frame).await.unwrap();
        }
        s.tx.close().await;
    };
    let recv = async {
        let mut got = 0usize;
        while let Some(f) = r.rx.recv().await.unwrap() {
            got += f.len() - COUNTER_LEN - 1;
        }
        got
    };
    let ((), got) = tokio::join!(send, recv);
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    assert_eq!(got, mib << 20);
    println!(
        "SEALED {mib} MiB in {secs:.2} s = {:.1} MB/s; CPU {cpu:.2} s both peers ({:.2} CPU-s/GiB)",
        (mib << 20) as f64 / secs / 1e6,
        cpu / (mib as f64 / 1024.0),
    );
}
