//! NAT lab tests: the real `skiff` and `skiff-signal` binaries between network namespaces
//! behind cone / symmetric NAT routers and a UDP-blocking firewall, with a real coturn and
//! shaped WAN links (`tests/netlab/netlab.sh`; see `tests/netlab/README.md`).
//!
//! Every test builds its own lab and tears it down (namespaces, processes, temp dirs)
//! however it ends. Needs root: without it they skip loudly, unless `CI` is set, where
//! they fail. The cases of issue 5:
//!
//! 1. cone ↔ cone: path `direct`, not relayed (srv carried no data), identical file;
//! 2. symmetric ↔ symmetric: path `turn-udp`, relayed, identical;
//! 3. the receiver's router drops all UDP: completes over TURN (`turn-tcp`/`turn-tls`);
//! 4. both peers on one LAN: path `lan`, with STUN and TURN unreachable;
//! 5. receiver, then sender, SIGKILLed mid-transfer and resumed with `skiff resume ID`;
//! 6. the signaling server killed and restarted mid-transfer: the data keeps flowing;
//! 7. a tampering signaling server (PAKE substituted, PAKE garbled, sealed blobs flipped):
//!    both sides fail ("peer verification failed" / `code_mismatch` / `decrypt`), nothing
//!    is written;
//! 8. shaped WAN (50 Mbit/s, 80 ms RTT, 1 % loss on both routers): completes; prints the
//!    throughput as a share of the shaped rate.

mod lab;
mod proc;
mod proxy;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use lab::{Lab, SIGNAL_PORT, SRV_IP};
use proc::*;
use proxy::{Proxy, Tamper};

/// Where a relayed transfer's bytes show: srv's interface carries at least the file once.
/// A direct or LAN one leaves only signaling, STUN and ICE checks there.
const NOT_RELAYED_MAX: u64 = 2 * MIB;

/// One transfer between two lab hosts through the lab's signaling server.
struct Run {
    sender: Proc,
    receiver: Proc,
    id: String,
    want: String,
    size: u64,
    file: String,
    out: PathBuf,
    s_data: PathBuf,
    r_data: PathBuf,
    started: Instant,
    srv_before: u64,
}

/// What a completed [`Run`] showed.
struct Done {
    sender_path: String,
    receiver_path: String,
    /// Receiver's `connected` event → its `done` event.
    data_time: Duration,
    /// Receiver start (code entered) → its `connected` event.
    connect_time: Option<Duration>,
    /// Bytes srv's interface carried during the run.
    srv_bytes: u64,
}

fn path_of(done: &Value) -> String {
    done["path"].as_str().unwrap_or("<none>").to_owned()
}

impl Run {
    /// `skiff send` on `from` (waits for its code), then `skiff receive` on `to`.
    fn start(lab: &Lab, url: &str, from: &str, to: &str, size: u64) -> Run {
        Run::start_with(lab, url, from, to, size, &[])
    }

    /// Like [`Run::start`], with global `flags` (e.g. `--webrtc-only`) on both sides.
    fn start_with(lab: &Lab, url: &str, from: &str, to: &str, size: u64, flags: &[&str]) -> Run {
        let file = "payload.bin".to_owned();
        let src_dir = lab.dir("src");
        let src = src_dir.join(&file);
        let want = write_random(&src, size, seed(&lab.name));
        let (s_data, r_data, out) = (lab.dir("S"), lab.dir("R"), lab.dir("out"));
        let srv_before = lab.srv_bytes();
        let src_s = src.display().to_string();
        let mut args = flags.to_vec();
        args.extend(["send", "--signal", url, &src_s]);
        let mut sender = Proc::spawn(lab, from, "sender", &s_data, &args, &[]);
        let code_ev = sender.wait_event("code", secs(30));
        let code = code_ev["code"].as_str().expect("code").to_owned();
        let id = code_ev["transfer"]
            .as_str()
            .expect("transfer id")
            .to_owned();
        let started = Instant::now();
        let receiver = receive(lab, to, &r_data, url, &out, &code, flags);
        Run {
            sender,
            receiver,
            id,
            want,
            size,
            file,
            out,
            s_data,
            r_data,
            started,
            srv_before,
        }
    }

    /// Waits for `done` and exit 0 on both sides; checks the file byte for byte and that
    /// nothing else (no part file) is left in the receiver's folder.
    fn complete(&mut self, lab: &Lab, timeout: Duration) -> Done {
        let r_done = self.receiver.wait_event("done", timeout);
        let r_done_at = Instant::now();
        let s_done = self.sender.wait_event("done", secs(60));
        self.receiver.expect_success(secs(30));
        let r_exit = r_done_at.elapsed();
        self.sender.expect_success(secs(30));
        self.receiver.assert_all_json();
        self.sender.assert_all_json();
        let got = sha256_file(&self.out.join(&self.file));
        assert_eq!(got, self.want, "the received file differs from the source");
        let reported = r_done["files"]
            .as_array()
            .and_then(|fs| fs.iter().find(|f| f["path"] == self.file.as_str()))
            .and_then(|f| f["sha256"].as_str())
            .unwrap_or_default()
            .to_owned();
        assert_eq!(reported, self.want, "the done event's digest: {r_done}");
        assert_eq!(
            names_in(&self.out),
            vec![self.file.clone()],
            "exactly the file, no part file"
        );
        let connected = self.receiver.time_of(|e| ev_is(e, "connected"));
        let done_at = self
            .receiver
            .time_of(|e| ev_is(e, "done"))
            .unwrap_or_else(Instant::now);
        let d = Done {
            sender_path: path_of(&s_done),
            receiver_path: path_of(&r_done),
            data_time: done_at - connected.unwrap_or(self.started),
            connect_time: connected.map(|c| c - self.started),
            srv_bytes: lab.srv_bytes() - self.srv_before,
        };
        eprintln!(
            "netlab {}: {} MiB done: paths sender={} receiver={}, connect {:?}, data {:?} \
             ({:.1} MB/s), srv carried {} KiB, coturn: {:?}",
            lab.name,
            self.size / MIB,
            d.sender_path,
            d.receiver_path,
            d.connect_time,
            d.data_time,
            self.size as f64 / d.data_time.as_secs_f64() / 1e6,
            d.srv_bytes / 1024,
            lab.coturn_summary()
        );
        if r_exit > secs(3) {
            eprintln!(
                "netlab {}: NOTE the receiver exited {r_exit:?} after its done event",
                lab.name
            );
        }
        d
    }
}

fn receive(
    lab: &Lab,
    host: &str,
    data: &Path,
    url: &str,
    out: &Path,
    code: &str,
    flags: &[&str],
) -> Proc {
    let dir = out.display().to_string();
    let mut args = flags.to_vec();
    args.extend(["receive", "--signal", url, "--yes", "--dir", &dir]);
    Proc::spawn(lab, host, "receiver", data, &args, &[("SKIFF_CODE", code)])
}

fn assert_relayed(lab: &Lab, d: &Done, size: u64) {
    assert!(
        d.srv_bytes >= size,
        "a relayed transfer of {size} bytes moved only {} bytes through srv",
        d.srv_bytes
    );
    let c = lab.coturn_summary();
    assert!(
        c.allocations > 0,
        "relayed, but coturn logged no allocation: {c:?}"
    );
}

fn assert_not_relayed(lab: &Lab, d: &Done) {
    assert!(
        d.srv_bytes < NOT_RELAYED_MAX,
        "paths {}/{}, but srv carried {} bytes: the data went through the relay",
        d.sender_path,
        d.receiver_path,
        d.srv_bytes
    );
    let c = lab.coturn_summary();
    assert!(
        c.usage_bytes < NOT_RELAYED_MAX,
        "coturn relayed {} bytes to peers: {c:?}",
        c.usage_bytes
    );
}

// ---- 1. cone ↔ cone -------------------------------------------------------------------

#[test]
fn case1_cone_to_cone_is_direct_and_not_relayed() {
    let Some(lab) = Lab::up("case1-cone-cone", &["--nat", "cone"]) else {
        return;
    };
    let _sig = lab.signal();
    let mut run = Run::start(&lab, &lab.signal_url(), "peerA", "peerB", 16 * MIB);
    let d = run.complete(&lab, secs(120));
    assert_eq!(
        (d.sender_path.as_str(), d.receiver_path.as_str()),
        ("direct", "direct")
    );
    assert_not_relayed(&lab, &d);
}

// ---- 2. symmetric ↔ symmetric ---------------------------------------------------------

/// Symmetric NAT on both sides: no direct pair exists, the data must go through coturn,
/// over UDP (WebRTC's relay candidate; the TURN TCP relay is for UDP-blocked networks).
#[test]
fn case2_symmetric_to_symmetric_goes_through_turn_udp() {
    let Some(lab) = Lab::up("case2-sym-sym", &["--nat", "symmetric"]) else {
        return;
    };
    let _sig = lab.signal();
    let mut run = Run::start(&lab, &lab.signal_url(), "peerA", "peerB", 16 * MIB);
    let d = run.complete(&lab, secs(180));
    assert_eq!(
        (d.sender_path.as_str(), d.receiver_path.as_str()),
        ("turn-udp", "turn-udp"),
        "symmetric NATs: the relay over UDP (connect took {:?}; the TCP relay fallback \
         starts after 4 s without WebRTC)",
        d.connect_time
    );
    assert_relayed(&lab, &d, run.size);
}

// ---- 3. UDP blocked -------------------------------------------------------------------

#[test]
fn case3_receiver_behind_udp_blocking_firewall_completes_over_turn_tcp() {
    let Some(lab) = Lab::up("case3-udp-blocked", &["--nat", "cone", "--block-udp", "b"]) else {
        return;
    };
    let _sig = lab.signal();
    let mut run = Run::start(&lab, &lab.signal_url(), "peerA", "peerB", 16 * MIB);
    let d = run.complete(&lab, secs(180));
    assert!(
        ["turn-tcp", "turn-tls"].contains(&d.receiver_path.as_str()),
        "the receiver cannot send UDP at all, yet reports path {}",
        d.receiver_path
    );
    assert!(
        d.sender_path.starts_with("turn-"),
        "the sender reports path {} for a relayed transfer",
        d.sender_path
    );
    assert_relayed(&lab, &d, run.size);
}

// ---- 4. same LAN ----------------------------------------------------------------------

#[test]
fn case4_same_lan_is_lan_without_stun_or_turn() {
    same_lan("case4-lan", &[]);
}

/// The same over WebRTC only (no TCP addresses offered or tried): ICE host candidates.
#[test]
fn case4b_same_lan_over_webrtc_uses_host_candidates_without_stun_or_turn() {
    same_lan("case4b-lan-webrtc", &["--webrtc-only"]);
}

fn same_lan(name: &str, flags: &[&str]) {
    let Some(lab) = Lab::up(name, &["--nat", "cone"]) else {
        return;
    };
    let _sig = lab.signal();
    // STUN and TURN unreachable (silently dropped, as a bad network does): a LAN
    // transfer must not need them.
    for (proto, port) in [("udp", "3478"), ("tcp", "3478"), ("tcp", "5349")] {
        lab.exec_ok(
            "srv",
            &[
                "iptables", "-I", "INPUT", "-p", proto, "--dport", port, "-j", "DROP",
            ],
        );
    }
    let mut run = Run::start_with(&lab, &lab.signal_url(), "peerA", "peerA2", 16 * MIB, flags);
    let d = run.complete(&lab, secs(120));
    assert_eq!(
        (d.sender_path.as_str(), d.receiver_path.as_str()),
        ("lan", "lan")
    );
    assert_not_relayed(&lab, &d);
    let c = lab.coturn_summary();
    assert_eq!(
        c.allocations, 0,
        "coturn allocated for a LAN transfer: {c:?}"
    );
}

// ---- 5. SIGKILL and resume ------------------------------------------------------------

/// Kills one side once data flows, resumes it with `skiff resume ID` on the same host and
/// data dir, and checks the result. `lan`: peerA → peerA2 with peerA's LAN link shaped;
/// otherwise peerA → peerB across cone NATs with both WAN links shaped.
fn kill_and_resume(name: &str, kill_sender: bool, lan: bool) {
    let Some(lab) = Lab::up(name, &["--nat", "cone"]) else {
        return;
    };
    let _sig = lab.signal();
    // Slow enough that the kill lands mid-transfer: 32 MiB at 40 Mbit/s is ~7 s.
    let rate = "40mbit";
    let to = if lan {
        lab.exec_ok(
            "peerA",
            &[
                "tc", "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", rate, "burst",
                "64kb", "latency", "200ms",
            ],
        );
        "peerA2"
    } else {
        lab.shape("rtrA", &["--rate", rate]);
        lab.shape("rtrB", &["--rate", rate]);
        "peerB"
    };
    let mut run = Run::start(&lab, &lab.signal_url(), "peerA", to, 32 * MIB);
    // Past the first checkpoint (the receiver commits every few MiB), so the resume
    // has something to start from.
    run.receiver.wait_for("12 MiB received", secs(90), |e| {
        ev_is(e, "progress") && bytes_of(e) >= 12 * MIB
    });
    run.receiver.drain();
    assert!(
        run.receiver.running() && run.sender.running(),
        "the transfer ended before the kill"
    );
    let seen = run.receiver.max_progress();
    let id = run.id.clone();
    let resume_args = ["resume", id.as_str(), "--wait", "120"];
    let killed: Instant;
    if kill_sender {
        run.sender.kill9();
        killed = Instant::now();
        eprintln!("netlab {name}: sender killed at {seen} bytes (receiver's progress)");
        std::thread::sleep(Duration::from_secs(1));
        let s_data = run.s_data.clone();
        run.sender = Proc::spawn(&lab, "peerA", "sender(resumed)", &s_data, &resume_args, &[]);
    } else {
        run.receiver.kill9();
        killed = Instant::now();
        eprintln!("netlab {name}: receiver killed at {seen} bytes");
        let r_data = run.r_data.clone();
        run.receiver = Proc::spawn(&lab, to, "receiver(resumed)", &r_data, &resume_args, &[]);
        let first = run
            .receiver
            .wait_for("progress after the resume", secs(120), |e| {
                ev_is(e, "progress")
            });
        eprintln!(
            "netlab {name}: resumed at {} of {} bytes",
            bytes_of(&first),
            run.size
        );
        assert!(
            bytes_of(&first) > 0,
            "{seen} bytes had arrived, yet the resume started from nothing"
        );
        let connected = run.receiver.events("connected");
        assert!(
            connected.iter().all(|c| c["resumed"] == true),
            "a resume reconnects with the stored secret: {connected:?}"
        );
    }
    let d = run.complete(&lab, secs(180));
    let restarted = if kill_sender {
        &run.sender
    } else {
        &run.receiver
    };
    eprintln!(
        "netlab {name}: kill → the restarted side's `connected`: {:?}",
        restarted
            .time_of(|e| ev_is(e, "connected"))
            .map(|t| t - killed)
    );
    if lan {
        assert_eq!(d.receiver_path, "lan");
    } else {
        assert_eq!(d.receiver_path, "direct");
        assert_not_relayed(&lab, &d);
    }
}

#[test]
fn case5a_receiver_sigkilled_across_nats_resumes() {
    kill_and_resume("case5a-kill-receiver", false, false);
}

#[test]
fn case5b_sender_sigkilled_across_nats_resumes() {
    kill_and_resume("case5b-kill-sender", true, false);
}

#[test]
fn case5c_receiver_sigkilled_on_lan_resumes() {
    kill_and_resume("case5c-kill-receiver-lan", false, true);
}

#[test]
fn case5d_sender_sigkilled_on_lan_resumes() {
    kill_and_resume("case5d-kill-sender-lan", true, true);
}

// ---- 6. signaling server restarted ----------------------------------------------------

#[test]
fn case6_signaling_server_restart_mid_transfer_keeps_data_flowing() {
    let name = "case6-signal-restart";
    let Some(lab) = Lab::up(name, &["--nat", "cone"]) else {
        return;
    };
    let mut sig = lab.signal();
    lab.shape("rtrA", &["--rate", "30mbit"]);
    lab.shape("rtrB", &["--rate", "30mbit"]);
    let mut run = Run::start(&lab, &lab.signal_url(), "peerA", "peerB", 32 * MIB);
    run.receiver.wait_for("data flowing", secs(60), |e| {
        ev_is(e, "progress") && bytes_of(e) > 0
    });
    run.receiver.drain();
    let at_kill = run.receiver.max_progress();
    sig.kill();
    eprintln!("netlab {name}: signaling server killed at {at_kill} bytes");
    // With the server gone, the peer-to-peer path carries on.
    let moving = run
        .receiver
        .wait_for("progress while the server is down", secs(20), |e| {
            ev_is(e, "progress") && bytes_of(e) >= at_kill + 2 * MIB
        });
    eprintln!(
        "netlab {name}: {} bytes while the server was down",
        bytes_of(&moving) - at_kill
    );
    std::thread::sleep(Duration::from_secs(2));
    sig.restart();
    let restarted = Instant::now();
    // Informational (the issue wants clients to reconnect; the data does not need it):
    // the most connections the restarted server saw while the transfer ran.
    let mut most = 0.0f64;
    while run.receiver.running() && restarted.elapsed() < secs(60) {
        most = most.max(sig.metric("skiff_signal_connections").unwrap_or(0.0));
        std::thread::sleep(Duration::from_millis(500));
    }
    let d = run.complete(&lab, secs(180));
    assert_eq!(d.receiver_path, "direct");
    eprintln!(
        "netlab {name}: clients connected to the restarted server while the transfer \
         ran ({:?} after the restart): at most {most}",
        restarted.elapsed()
    );
}

// ---- 7. tampering signaling server ----------------------------------------------------

const PROXY_PORT: u16 = 8081;

/// Both sides must refuse: "peer verification failed" in the message (the wording the
/// WebRTC path uses; kind `peer_verification_failed`), or the kinds the handshake reports
/// today (`code_mismatch` for a failed key confirmation, `decrypt` for a sealed blob that
/// does not authenticate).
fn verification_failure(p: &Proc) -> Option<Value> {
    p.events("error")
        .into_iter()
        .find(|e| {
            let msg = e["message"].as_str().unwrap_or("").to_lowercase();
            let kind = e["kind"].as_str().unwrap_or("");
            msg.contains("peer verification failed")
                || ["peer_verification_failed", "code_mismatch", "decrypt"].contains(&kind)
        })
        .cloned()
}

fn tampered(name: &str, mode: Tamper) {
    let Some(lab) = Lab::up(name, &["--nat", "cone"]) else {
        return;
    };
    let _sig = lab.signal();
    let listen: SocketAddr = format!("{SRV_IP}:{PROXY_PORT}").parse().unwrap();
    let upstream: SocketAddr = format!("{SRV_IP}:{SIGNAL_PORT}").parse().unwrap();
    let proxy = Proxy::start(&lab.ns("srv"), listen, upstream, mode);
    let url = format!("ws://{listen}/ws");
    let mut run = Run::start(&lab, &url, "peerA", "peerB", 8 * MIB);
    let r_status = run.receiver.wait_exit(secs(90));
    let s_status = run.sender.wait_exit(secs(90));
    let (relayed, altered) = (
        proxy.relayed.load(Ordering::Relaxed),
        proxy.tampered.load(Ordering::Relaxed),
    );
    eprintln!(
        "netlab {name}: proxy relayed {relayed} client frames, altered {altered}; \
         receiver {r_status}, sender {s_status}\nreceiver errors: {:?}\nsender errors: {:?}",
        run.receiver.events("error"),
        run.sender.events("error")
    );
    assert!(altered > 0, "the proxy altered nothing ({relayed} frames)");
    assert!(
        !r_status.success(),
        "the receiver succeeded through a tampering server"
    );
    assert!(
        !s_status.success(),
        "the sender succeeded through a tampering server"
    );
    for p in [&run.receiver, &run.sender] {
        assert!(
            verification_failure(p).is_some(),
            "{}: no verification error (want \"peer verification failed\", code_mismatch \
             or decrypt)\n{}",
            p.name,
            p.dump()
        );
        assert!(
            p.events("progress").iter().all(|e| bytes_of(e) == 0),
            "{}: data moved through a tampered session",
            p.name
        );
    }
    assert!(
        run.receiver.events("offer").is_empty(),
        "the receiver saw the offer through a tampered session"
    );
    assert_eq!(
        names_in(&run.out),
        Vec::<String>::new(),
        "nothing may be written in the receiver's folder, not even a part file"
    );
}

#[test]
fn case7a_tampering_server_substituting_the_pake_is_refused() {
    tampered("case7a-tamper-pake", Tamper::PakeSubstitute);
}

#[test]
fn case7b_tampering_server_garbling_the_pake_is_refused() {
    tampered("case7b-garble-pake", Tamper::PakeGarble);
}

#[test]
fn case7c_tampering_server_altering_sealed_blobs_is_refused() {
    tampered("case7c-tamper-sealed", Tamper::Sealed);
}

// ---- 8. shaped WAN --------------------------------------------------------------------

#[test]
fn case8_shaped_wan_completes_and_reports_throughput() {
    let name = "case8-shaped-wan";
    let Some(lab) = Lab::up(name, &["--nat", "cone"]) else {
        return;
    };
    let _sig = lab.signal();
    // 20 ms each way on both routers: 80 ms RTT peer to peer, as the issue asks.
    let shaping = ["--rate", "50mbit", "--delay", "20ms", "--loss", "1%"];
    lab.shape("rtrA", &shaping);
    lab.shape("rtrB", &shaping);
    let mib = std::env::var("NETLAB_SHAPED_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let mut run = Run::start(&lab, &lab.signal_url(), "peerA", "peerB", mib * MIB);
    let d = run.complete(&lab, secs(900));
    let mbit = run.size as f64 * 8.0 / d.data_time.as_secs_f64() / 1e6;
    eprintln!(
        "netlab {name}: SHAPED WAN (both routers 50 Mbit/s, +20 ms each way, 1 % loss; \
         peer↔peer RTT 80 ms, loss ~2 % each way): {} MiB in {:?} = {mbit:.1} Mbit/s = \
         {:.0} % of the shaped 50 Mbit/s (connect {:?}, path {}/{})",
        run.size / MIB,
        d.data_time,
        mbit / 50.0 * 100.0,
        d.connect_time,
        d.sender_path,
        d.receiver_path
    );
    assert_eq!(d.receiver_path, "direct");
}
