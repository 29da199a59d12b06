//! `lan` over real multicast: each side runs on a thread moved into its own network
//! namespace (the mDNS daemon threads it starts inherit it), the two joined by a veth
//! pair. Needs root; without it the test skips loudly, or fails when `CI` is set.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use skiff_core::lan::{self, CodeAt, LanAdvert, LanEvent};
use skiff_core::{Error, ListenOptions, Outcome, ReceiveOptions, SendOptions};

use crate::util::{spawn_node, within};

struct NetPair {
    a: String,
    b: String,
}

const ADDR_A: &str = "10.215.0.1";

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
            "skfc{}x{}",
            std::process::id() % 100_000,
            N.fetch_add(1, Ordering::Relaxed)
        );
        let pair = NetPair {
            a: format!("{tag}a"),
            b: format!("{tag}b"),
        };
        pair.delete();
        ip(&["netns", "add", &pair.a])?;
        ip(&["netns", "add", &pair.b])?;
        let (va, vb) = (format!("{tag}va"), format!("{tag}vb"));
        ip(&[
            "link", "add", &va, "netns", &pair.a, "type", "veth", "peer", "name", &vb, "netns",
            &pair.b,
        ])?;
        for (ns, dev, addr) in [(&pair.a, &va, ADDR_A), (&pair.b, &vb, "10.215.0.2")] {
            let cidr = format!("{addr}/24");
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "addr", "add", &cidr, "dev", dev])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "route", "add", "224.0.0.0/4", "dev", dev])?;
        }
        Ok(pair)
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
        self.delete();
    }
}

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

/// Runs `f` on a new thread inside namespace `ns`, on a current-thread runtime.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>> + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
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

/// Raw records as a hostile (or just different) host might announce them.
fn hostile(daemon: &mdns_sd::ServiceDaemon) {
    let cases: [(&str, Vec<(&str, &str)>); 4] = [
        (
            "bad-id",
            vec![("v", "1"), ("id", "no spaces allowed"), ("name", "x")],
        ),
        ("v2", vec![("v", "2"), ("id", "future"), ("name", "x")]),
        (
            "both",
            vec![("v", "1"), ("id", "both"), ("np", "7"), ("name", "x")],
        ),
        ("noname", vec![("v", "1"), ("id", "anon")]),
    ];
    for (instance, props) in cases {
        let info = mdns_sd::ServiceInfo::new(
            lan::SERVICE_TYPE,
            instance,
            &format!("hostile-{instance}.local."),
            ADDR_A,
            7001,
            &props[..],
        )
        .unwrap();
        daemon.register(info).unwrap();
    }
}

#[test]
fn devices_come_and_go_codes_are_found_and_bad_records_are_ignored() {
    let Some(net) = net_pair("devices_come_and_go_codes_are_found_and_bad_records_are_ignored")
    else {
        return;
    };
    let (drop_tx, drop_rx) = mpsc::channel::<()>();
    let (up_tx, up_rx) = mpsc::channel::<()>();
    let side_a = in_ns(&net.a, move || {
        Box::pin(async move {
            let any: SocketAddr = "0.0.0.0:7000".parse().unwrap();
            let device = LanAdvert::device("desk-1", "Desk\u{202e}gpj.exe", any).unwrap();
            let code = LanAdvert::transfer("417", any, "laptop").unwrap();
            let twin_a = LanAdvert::transfer("88", any, "one").unwrap();
            let twin_b = LanAdvert::transfer("88", "0.0.0.0:7002".parse().unwrap(), "two").unwrap();
            let raw = mdns_sd::ServiceDaemon::new().unwrap();
            hostile(&raw);
            up_tx.send(()).unwrap();
            // Until told, then withdraw the device (goodbye) and keep the rest a moment.
            tokio::task::spawn_blocking(move || drop_rx.recv_timeout(Duration::from_secs(60)))
                .await
                .unwrap()
                .unwrap();
            device.close().await;
            tokio::time::sleep(Duration::from_secs(3)).await;
            drop((code, twin_a, twin_b));
            let _ = raw.shutdown();
        })
    });
    up_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let side_b = in_ns(&net.b, move || {
        Box::pin(async move {
            // A code's sender: its nameplate only, at A's address.
            let found = lan::find_nameplate("417", Duration::from_secs(15))
                .await
                .unwrap();
            assert_eq!(
                found,
                CodeAt::Sender(vec![format!("{ADDR_A}:7000")
                    .parse::<SocketAddr>()
                    .unwrap()])
            );
            // Two senders with one number: neither is dialed.
            let twins = lan::find_nameplate("88", Duration::from_secs(15)).await;
            assert!(
                matches!(&twins, Err(Error::Lan { reason }) if reason.contains("more than one")),
                "{twins:?}"
            );
            let none = lan::find_nameplate("418", Duration::from_secs(2)).await;
            assert!(
                matches!(&none, Err(Error::NotOnLan { nameplate }) if nameplate == "418"),
                "{none:?}"
            );

            let mut devices = lan::browse_devices().unwrap();
            let mut seen = Vec::new();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            let desk = loop {
                let ev = tokio::time::timeout_at(deadline, devices.next())
                    .await
                    .unwrap_or_else(|_| panic!("no device seen; events: {seen:?}"))
                    .expect("browse ended");
                seen.push(ev.clone());
                if let LanEvent::Added(d) = &ev {
                    if d.id == "desk-1" {
                        break d.clone();
                    }
                }
            };
            // Named for display: the bidi override is escaped.
            assert_eq!(desk.name, "Desk\\u{202e}gpj.exe");
            assert_eq!(
                desk.addrs,
                vec![format!("{ADDR_A}:7000").parse::<SocketAddr>().unwrap()]
            );
            drop_tx.send(()).unwrap();
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let ev = tokio::time::timeout_at(deadline, devices.next())
                    .await
                    .unwrap_or_else(|_| panic!("desk-1 never left; events: {seen:?}"))
                    .expect("browse ended");
                seen.push(ev.clone());
                if ev
                    == (LanEvent::Removed {
                        id: "desk-1".into(),
                    })
                {
                    break;
                }
            }
            // None of the bad records ever showed up as a device.
            for ev in &seen {
                if let LanEvent::Added(d) = ev {
                    assert_eq!(d.id, "desk-1", "{seen:?}");
                }
            }
        })
    });
    let b = side_b.join();
    let a = side_a.join();
    if let Err(e) = b {
        std::panic::resume_unwind(e);
    }
    if let Err(e) = a {
        std::panic::resume_unwind(e);
    }
}

/// A `skiff-signal` on `addr` in the current namespace, until `stop` fires.
async fn signal_server(
    addr: &str,
    stop: tokio::sync::oneshot::Receiver<()>,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let bound = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.await;
        };
        skiff_signal::run(listener, skiff_signal::Config::default(), shutdown)
            .await
            .unwrap();
    });
    (bound, task)
}

fn receive_opts(dir: std::path::PathBuf, find_on_lan: bool) -> ReceiveOptions {
    ReceiveOptions {
        dir: Some(dir),
        auto_accept: true,
        reconnect_for: Duration::from_secs(5),
        find_on_lan,
        ..Default::default()
    }
}

#[track_caller]
fn assert_done(out: &Result<Outcome, Error>) {
    assert!(matches!(out, Ok(Outcome::Done { .. })), "{out:?}");
}

/// The app's embedded mode on two machines: A runs a signaling server on `0.0.0.0`, is
/// online there in `LAN_SPACE` and announces its device and a code's nameplate (`snp=`);
/// B, on its own loopback server, receives A's code through A's server (found on the LAN,
/// and stored as the transfer's server), then sends to A's device through A's server.
#[test]
fn codes_and_devices_on_a_lan_signaling_server() {
    let Some(net) = net_pair("codes_and_devices_on_a_lan_signaling_server") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().to_owned();
    let (code_tx, code_rx) = mpsc::channel::<String>();
    let (end_tx, end_rx) = mpsc::channel::<()>();
    let ra = root.clone();
    let side_a = in_ns(&net.a, move || {
        Box::pin(async move {
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let (server, task) = signal_server("0.0.0.0:47231", stopped).await;
            let node = spawn_node(&ra.join("a/state"), &ra.join("a")).await;
            node.set_signal_url(Some("ws://127.0.0.1:47231/ws".into()))
                .await
                .unwrap();
            node.listen(ListenOptions {
                space: Some(lan::LAN_SPACE.into()),
                receive: receive_opts(ra.join("a/in"), false),
            })
            .await
            .unwrap();
            let id = node.device_id().await.unwrap();
            let advert = LanAdvert::device(&id, "desk", server).unwrap();
            let src = ra.join("a/hello.txt");
            std::fs::write(&src, b"hello from a").unwrap();
            let opts = SendOptions {
                listen: "0.0.0.0:0".into(),
                announce_server: Some(server),
                ..Default::default()
            };
            let started = node.send(vec![src], opts).await.unwrap();
            // The code's words stay here: only its number goes on the LAN.
            code_tx.send(started.code.clone()).unwrap();
            assert_done(&within("a's send by code", node.wait(&started.id)).await);
            // Until B's send to this device arrived through the listen.
            tokio::task::spawn_blocking(move || end_rx.recv_timeout(Duration::from_secs(120)))
                .await
                .unwrap()
                .unwrap();
            let got = std::fs::read(ra.join("a/in/back.txt")).unwrap();
            assert_eq!(got, b"hello from b");
            advert.close().await;
            node.shutdown().await;
            let _ = stop.send(());
            let _ = task.await;
        })
    });
    let code = code_rx.recv_timeout(Duration::from_secs(30)).unwrap();
    let rb = root.clone();
    let side_b = in_ns(&net.b, move || {
        Box::pin(async move {
            let server_a = format!("{ADDR_A}:47231");
            let url_a = format!("ws://{server_a}/ws");
            // A reader finds the nameplate as living on A's server.
            let nameplate = code.split('-').next().unwrap().to_owned();
            let found = lan::find_nameplate(&nameplate, Duration::from_secs(15))
                .await
                .unwrap();
            assert_eq!(found, CodeAt::Server(vec![server_a.parse().unwrap()]));

            // B's own (embedded, loopback) server, as in the app.
            let (stop, stopped) = tokio::sync::oneshot::channel();
            let (own, task) = signal_server("127.0.0.1:0", stopped).await;
            let node = spawn_node(&rb.join("b/state"), &rb.join("b")).await;
            node.set_signal_url(Some(format!("ws://{own}/ws")))
                .await
                .unwrap();
            let offer = within(
                "b's receive",
                node.receive(&code, receive_opts(rb.join("b/in"), true)),
            )
            .await
            .unwrap();
            assert_done(&within("b's receive", node.wait(&offer.id)).await);
            assert_eq!(
                std::fs::read(rb.join("b/in/hello.txt")).unwrap(),
                b"hello from a"
            );
            let row = |id: String| {
                let node = node.clone();
                async move {
                    let list = node.list().await.unwrap();
                    list.into_iter().find(|t| t.id == id).unwrap()
                }
            };
            // Stored: a resume meets the sender at A's server, not B's own.
            assert_eq!(
                row(offer.id.clone()).await.signal_url.as_deref(),
                Some(&*url_a)
            );

            // A's device, and a send to it through its server, in the LAN space.
            let mut devices = lan::browse_devices().unwrap();
            let desk = loop {
                let ev = within("a's device on the LAN", devices.next()).await;
                if let Some(LanEvent::Added(d)) = ev {
                    if d.name == "desk" {
                        break d;
                    }
                }
            };
            assert_eq!(desk.signal_urls(), std::slice::from_ref(&url_a));
            let url = lan::reachable_signal_url(&desk.addrs).await.unwrap();
            assert_eq!(url, url_a);
            let src = rb.join("b/back.txt");
            std::fs::write(&src, b"hello from b").unwrap();
            let opts = SendOptions {
                listen: "0.0.0.0:0".into(),
                signal: Some(url.clone()),
                ..Default::default()
            };
            let space = Some(lan::LAN_SPACE.to_owned());
            let started = node
                .send_to(&desk.id, space, vec![src], opts)
                .await
                .unwrap();
            assert_done(&within("b's send to a's device", node.wait(&started.id)).await);
            assert_eq!(
                row(started.id.clone()).await.signal_url.as_deref(),
                Some(&*url_a)
            );
            // A bad per-transfer URL is refused before any network call.
            let bad = SendOptions {
                signal: Some("http://x/ws".into()),
                ..Default::default()
            };
            assert!(matches!(
                node.send(vec![rb.join("b/back.txt")], bad).await,
                Err(Error::InvalidInput { .. })
            ));
            node.shutdown().await;
            let _ = stop.send(());
            let _ = task.await;
        })
    });
    let b = side_b.join();
    let _ = end_tx.send(());
    let a = side_a.join();
    if let Err(e) = b {
        std::panic::resume_unwind(e);
    }
    if let Err(e) = a {
        std::panic::resume_unwind(e);
    }
}
