//! LAN discovery, end to end: `skiff send` in one network namespace, `skiff receive CODE`
//! with no address and no server in another, the two joined by a veth pair (real
//! multicast, which loopback lacks). Needs root; without it the tests skip loudly, or
//! fail when `CI` is set.

use std::fs;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::util::*;

/// Two namespaces joined by a veth pair, `10.213.0.1/24` (sender side, `a`) and
/// `10.213.0.2/24` (`b`). Dropping it deletes both, whatever the way out of the test.
struct NetPair {
    a: String,
    b: String,
}

const ADDR_A: &str = "10.213.0.1";

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetPair {
    fn new() -> Result<NetPair, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "skfl{}x{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let pair = NetPair {
            a: format!("{tag}a"),
            b: format!("{tag}b"),
        };
        // A namespace left by an earlier run of the same pid (killed before its Drop).
        pair.delete();
        ip(&["netns", "add", &pair.a])?;
        ip(&["netns", "add", &pair.b])?;
        let (va, vb) = (format!("{tag}va"), format!("{tag}vb"));
        ip(&[
            "link", "add", &va, "netns", &pair.a, "type", "veth", "peer", "name", &vb, "netns",
            &pair.b,
        ])?;
        for (ns, dev, addr) in [(&pair.a, &va, ADDR_A), (&pair.b, &vb, "10.213.0.2")] {
            let cidr = format!("{addr}/24");
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", &cidr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", dev])?;
        }
        Ok(pair)
    }

    fn exec(ns: &str) -> [&str; 4] {
        ["ip", "netns", "exec", ns]
    }

    fn delete(&self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        self.delete(); // the veth pair goes with its namespaces
    }
}

/// The namespaces, or `None` when this machine cannot make them (not root) and `CI` is
/// unset: then the test says so loudly and passes. With `CI` set it fails instead.
fn net_pair(test: &str) -> Option<NetPair> {
    // SAFETY: a plain syscall without arguments.
    let root = unsafe { libc::geteuid() } == 0;
    let made = if root {
        NetPair::new()
    } else {
        Err("not running as root".into())
    };
    match made {
        Ok(p) => Some(p),
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("{test}: needs network namespaces (root) in CI: {e}")
        }
        Err(e) => {
            // Straight to stderr, past the test harness's capture: a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!! SKIPPED {test}: needs network namespaces: {e} (run as root) !!!\n"
            );
            None
        }
    }
}

/// `skiff send PATHS…` in namespace `ns` with no `--direct` (listens on 0.0.0.0:0) and
/// no server; returns the process, its code and its port.
fn send_in(ns: &str, data: &std::path::Path, paths: &[&std::path::Path]) -> (Proc, String, String) {
    let wrapper = NetPair::exec(ns);
    let mut args = vec!["send".to_string()];
    args.extend(paths.iter().map(|p| p.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let launch = Launch {
        wrapper: &wrapper,
        ..Launch::default()
    };
    let mut s = Proc::launch(launch, "sender", data, &args, &[], None);
    let ev = s.wait_event("code", secs(30));
    let listen = ev["listen"].as_str().unwrap_or("");
    let port = listen
        .strip_prefix("0.0.0.0:")
        .unwrap_or_else(|| panic!("{ev}"));
    let port = port.to_owned();
    (s, ev["code"].as_str().expect("code").to_owned(), port)
}

fn sample_tree(root: &std::path::Path) {
    let photos = root.join("photos");
    fs::create_dir_all(photos.join("2024/trip")).unwrap();
    fs::create_dir_all(photos.join("empty")).unwrap();
    write_random(&photos.join("2024/trip/beach.raw"), 5 * MIB + 123, 1);
    write_random(&photos.join("2024/notes.txt"), 1000, 2);
    fs::write(photos.join("zero.bin"), b"").unwrap();
}

#[test]
fn receive_finds_the_sender_on_the_lan_with_no_address() {
    let Some(net) = net_pair("receive_finds_the_sender_on_the_lan_with_no_address") else {
        return;
    };
    let (s_data, r_data, src, out) = (tempdir(), tempdir(), tempdir(), tempdir());
    sample_tree(src.path());
    let photos = src.path().join("photos");
    let (mut s, code, port) = send_in(&net.a, s_data.path(), &[&photos]);

    // Exactly what a user types: `skiff receive CODE`, plus where to save and no prompt.
    let wrapper = NetPair::exec(&net.b);
    let dir = out.path().display().to_string();
    let args = ["receive", &code, "--dir", &dir, "--yes"];
    let launch = Launch {
        wrapper: &wrapper,
        ..Launch::default()
    };
    let mut r = Proc::launch(launch, "receiver", r_data.path(), &args, &[], None);
    let connected = r.wait_event("connected", secs(30));
    // Found by itself: the only way it could know the sender's address and port.
    assert_eq!(
        connected["remote"],
        format!("{ADDR_A}:{port}"),
        "{connected}"
    );
    assert_eq!(connected["path"], "lan", "{connected}");
    assert_eq!(connected["resumed"], false);
    r.expect_success(secs(60));
    s.expect_success(secs(30));
    r.assert_all_json();
    s.assert_all_json();
    assert_same_tree(&photos, &out.path().join("photos"));
    let done = r.events("done");
    assert_eq!(done.len(), 1, "{:?}", r.seen);
    assert_eq!(
        done_sha(done[0], "photos/2024/trip/beach.raw"),
        sha256_file(&photos.join("2024/trip/beach.raw"))
    );
    // The receiver's checkpoint remembers the address it found (for `skiff resume`).
    let rows = list(r_data.path());
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "completed", "{rows:?}");
}

#[test]
fn the_lan_record_is_withdrawn_after_the_codes_one_attempt() {
    let Some(net) = net_pair("the_lan_record_is_withdrawn_after_the_codes_one_attempt") else {
        return;
    };
    let (s_data, r1_data, r2_data, src, out) =
        (tempdir(), tempdir(), tempdir(), tempdir(), tempdir());
    sample_tree(src.path());
    let photos = src.path().join("photos");
    let (mut s, code, _) = send_in(&net.a, s_data.path(), &[&photos]);
    let wrapper = NetPair::exec(&net.b);
    let dir = out.path().display().to_string();

    // The first receiver pairs, then waits at its "Accept?" prompt: the code is used,
    // the sender still runs.
    let launch = Launch {
        wrapper: &wrapper,
        keep_stdin: true,
        setsid: true,
        ..Launch::default()
    };
    let args = ["receive", "--dir", &dir];
    let env = [("SKIFF_CODE", code.as_str())];
    let mut r1 = Proc::launch(launch, "receiver 1", r1_data.path(), &args, &env, None);
    r1.wait_event("offer", secs(30));
    assert!(s.running(), "{}", s.dump());

    // A second receiver with the same code finds nothing on the LAN: a clear error.
    let launch = Launch {
        wrapper: &wrapper,
        ..Launch::default()
    };
    let args = ["receive", "--dir", &dir, "--yes"];
    let mut r2 = Proc::launch(launch, "receiver 2", r2_data.path(), &args, &env, None);
    assert!(!r2.wait_exit(secs(40)).success(), "{}", r2.dump());
    let errs = r2.events("error");
    assert_eq!(errs.len(), 1, "{:?}", r2.seen);
    assert_eq!(errs[0]["kind"], "not_on_lan", "{}", errs[0]);
    let nameplate = code.split('-').next().unwrap_or("?");
    assert_eq!(
        errs[0]["message"],
        format!("no sender with code {nameplate} found on this network")
    );
    assert!(r2.events("connected").is_empty());

    // The first one still completes.
    r1.write_stdin("y\n");
    r1.expect_success(secs(60));
    s.expect_success(secs(30));
    assert_same_tree(&photos, &out.path().join("photos"));
}

/// Runs `f` on a new thread inside namespace `ns` (threads it starts inherit it), on a
/// current-thread runtime.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        use std::os::fd::AsRawFd;
        // SAFETY: setns on a valid namespace fd; affects this thread (and threads it starts).
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(f())
    })
}

/// The desktop app's embedded mode on machine A (its signaling server on `0.0.0.0:47231`,
/// a code allocated there and announced as `snp=`); on machine B a plain
/// `skiff receive CODE` (no `--signal`, no address) finds it and receives through A's
/// server, which the checkpoint keeps for `skiff resume`.
#[test]
fn receive_finds_a_code_on_an_apps_signaling_server() {
    let Some(net) = net_pair("receive_finds_a_code_on_an_apps_signaling_server") else {
        return;
    };
    let (a_dir, r_data, out) = (tempdir(), tempdir(), tempdir());
    let src = a_dir.path().join("note.bin");
    let sha = write_random(&src, 300_000, 5);
    let (code_tx, code_rx) = std::sync::mpsc::channel::<String>();
    let (end_tx, end_rx) = std::sync::mpsc::channel::<()>();
    let state = a_dir.path().join("state");
    let side_a = in_ns(&net.a, move || {
        Box::pin(async move {
            let listener = tokio::net::TcpListener::bind("0.0.0.0:47231")
                .await
                .unwrap();
            let server = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let task = tokio::spawn(async move {
                let shutdown = async move {
                    let _ = stopped.await;
                };
                skiff_signal::run(listener, skiff_signal::Config::default(), shutdown)
                    .await
                    .unwrap();
            });
            let mut config = skiff_core::Config::new(Some(state));
            config.device_name = "the app".into();
            let node = skiff_core::Node::spawn(config).await.unwrap();
            node.set_signal_url(Some("ws://127.0.0.1:47231/ws".into()))
                .await
                .unwrap();
            let opts = skiff_core::SendOptions {
                listen: "0.0.0.0:0".into(),
                announce_server: Some(server),
                ..Default::default()
            };
            let started = node.send(vec![src], opts).await.unwrap();
            code_tx.send(started.code.clone()).unwrap();
            let outcome =
                tokio::time::timeout(std::time::Duration::from_secs(90), node.wait(&started.id))
                    .await;
            tokio::task::spawn_blocking(move || end_rx.recv_timeout(secs(60)))
                .await
                .unwrap()
                .ok();
            node.shutdown().await;
            let _ = stop.send(());
            let _ = task.await;
            format!("{outcome:?}")
        })
    });
    let code = code_rx.recv_timeout(secs(30)).unwrap();
    let wrapper = NetPair::exec(&net.b);
    let dir = out.path().display().to_string();
    let args = ["receive", &code, "--dir", &dir, "--yes"];
    let launch = Launch {
        wrapper: &wrapper,
        ..Launch::default()
    };
    let mut r = Proc::launch(launch, "receiver", r_data.path(), &args, &[], None);
    r.expect_success(secs(60));
    r.assert_all_json();
    assert_eq!(sha256_file(&out.path().join("note.bin")), sha);
    let rows = list(r_data.path());
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["state"], "completed", "{rows:?}");
    assert_eq!(
        rows[0]["signal_url"],
        format!("ws://{ADDR_A}:47231/ws"),
        "{rows:?}"
    );
    let _ = end_tx.send(());
    let a = side_a.join().unwrap();
    assert!(a.starts_with("Ok(Ok(Done"), "{a}");
}
