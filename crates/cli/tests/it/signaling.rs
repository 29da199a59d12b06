//! Codes through a real signaling server (in-process `skiff-signal` on loopback): the
//! server hands out the nameplate, the PAKE runs over its relay, data goes direct.

use std::path::Path;
use std::time::Duration;

use crate::util::*;

/// A `skiff-signal` on 127.0.0.1:0, running until dropped.
struct Server {
    url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start() -> Server {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                addr_tx.send(listener.local_addr().unwrap()).unwrap();
                let shutdown = async move {
                    let _ = stopped.await;
                };
                skiff_signal::run(listener, skiff_signal::Config::default(), shutdown)
                    .await
                    .unwrap();
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("signaling server started");
        Server {
            url: format!("ws://{addr}/ws"),
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn send_via(data: &Path, url: &str, paths: &[&Path]) -> (Proc, String) {
    let mut args = vec!["send", "--signal", url, "--direct", "127.0.0.1:0"];
    let ps: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    args.extend(ps.iter().map(String::as_str));
    let mut p = Proc::spawn("sender", data, &args, &[], None);
    let ev = p.wait_event("code", secs(30));
    (p, ev["code"].as_str().expect("code").to_owned())
}

fn receive_via(data: &Path, url: &str, out: &Path, code: &str) -> Proc {
    let dir = out.display().to_string();
    let args = ["receive", "--signal", url, "--dir", &dir, "--yes"];
    Proc::spawn("receiver", data, &args, &[("SKIFF_CODE", code)], None)
}

#[test]
fn code_through_signaling_server_sends_a_folder() {
    let server = Server::start();
    let t = tempdir();
    let src = t.path().join("album");
    std::fs::create_dir_all(src.join("empty")).unwrap();
    write_random(&src.join("big.bin"), 24 * MIB + 5, seed("signal-folder"));
    std::fs::write(src.join("ünï.txt"), b"hello").unwrap();
    let out = t.path().join("out");
    let (mut sender, code) = send_via(&t.path().join("s"), &server.url, &[&src]);
    // The nameplate is the server's; the words never reach it (they are not in the URL or argv).
    assert!(
        !sender.argv.iter().any(|a| a.contains(&code)),
        "code in argv"
    );
    let mut receiver = receive_via(&t.path().join("r"), &server.url, &out, &code);
    receiver.expect_success(secs(60));
    sender.expect_success(secs(30));
    assert_same_tree(&src, &out.join("album"));
    let done = receiver.events("done")[0].clone();
    assert_eq!(done["path"], "lan", "direct data path on loopback");
    assert_eq!(
        done_sha(&done, "album/big.bin"),
        sha256_file(&src.join("big.bin"))
    );
}

#[test]
fn wrong_code_through_signaling_server_is_a_mismatch_on_both_sides() {
    let server = Server::start();
    let t = tempdir();
    let file = t.path().join("f.bin");
    write_random(&file, MIB, seed("signal-wrong"));
    let out = t.path().join("out");
    let (mut sender, code) = send_via(&t.path().join("s"), &server.url, &[&file]);
    // Same nameplate, one word changed to another valid word.
    let mut parts: Vec<&str> = code.split('-').collect();
    parts[3] = if parts[3] == "zoo" { "zebra" } else { "zoo" };
    let wrong = parts.join("-");
    let mut receiver = receive_via(&t.path().join("r"), &server.url, &out, &wrong);
    assert!(!receiver.wait_exit(secs(30)).success());
    assert!(!sender.wait_exit(secs(30)).success());
    for p in [&receiver, &sender] {
        let errs = p.events("error");
        assert!(
            errs.iter().any(|e| e["kind"] == "code_mismatch"),
            "{}: {}",
            p.name,
            p.dump()
        );
    }
    assert!(!out.join("f.bin").exists());
}

#[test]
fn unknown_code_through_signaling_server_fails_fast() {
    let server = Server::start();
    let t = tempdir();
    let mut receiver = receive_via(
        &t.path().join("r"),
        &server.url,
        &t.path().join("out"),
        "4242-river-olive-kitten",
    );
    assert!(!receiver.wait_exit(secs(20)).success());
    assert!(
        receiver
            .events("error")
            .iter()
            .any(|e| e["kind"] == "unknown_code"),
        "{}",
        receiver.dump()
    );
}

#[test]
fn a_listening_device_receives_from_send_to_and_both_show_one_phrase() {
    let server = Server::start();
    let t = tempdir();
    let file = t.path().join("notes.bin");
    let sha = write_random(&file, 3 * MIB + 1, seed("send-to"));
    let out = t.path().join("out");
    let out_s = out.display().to_string();
    let listen_dir = t.path().join("l");
    let mut listener = Proc::spawn(
        "listener",
        &listen_dir,
        &["listen", "--signal", &server.url, "--dir", &out_s, "--yes"],
        &[],
        None,
    );
    let online = listener.wait_event("listening", secs(30));
    let device = online["device"].as_str().unwrap().to_owned();
    let f = file.display().to_string();
    // By a prefix of its device id (the name is this machine's, shared by both sides).
    let mut sender = Proc::spawn(
        "sender",
        &t.path().join("s"),
        &["send", "--signal", &server.url, "--to", &device[..16], &f],
        &[],
        None,
    );
    sender.expect_success(secs(60));
    let done = listener.wait_event("done", secs(30));
    assert_eq!(done["files"][0]["sha256"], sha.as_str());
    assert_eq!(sha256_file(&out.join("notes.bin")), sha);
    let (v_send, v_listen) = (
        sender.events("verify")[0].clone(),
        listener.events("verify")[0].clone(),
    );
    assert_eq!(v_send["phrase"], v_listen["phrase"]);
    assert_eq!(v_send["device"], device.as_str());
    assert_eq!(v_send["trusted"], false);
    // Pin it, then a stranger with another key but the same name is refused.
    let mut trust = Proc::spawn(
        "trust",
        &t.path().join("s"),
        &["trust", &device, "--signal", &server.url],
        &[],
        None,
    );
    trust.expect_success(secs(20));
    listener.kill9();
    let mut stranger = Proc::spawn(
        "stranger",
        &t.path().join("l2"),
        &["listen", "--signal", &server.url, "--dir", &out_s, "--yes"],
        &[],
        None,
    );
    stranger.wait_event("listening", secs(30));
    let name = v_listen["peer"].as_str().unwrap().to_owned();
    let mut refused = Proc::spawn(
        "refused",
        &t.path().join("s"),
        &["send", "--signal", &server.url, "--to", &name, &f],
        &[],
        None,
    );
    assert!(!refused.wait_exit(secs(30)).success());
    assert!(
        refused
            .events("error")
            .iter()
            .any(|e| e["kind"] == "peer_verification_failed"),
        "{}",
        refused.dump()
    );
    stranger.kill9();
}
