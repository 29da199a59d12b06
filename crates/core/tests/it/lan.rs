//! `lan` over real multicast: each side runs on a thread moved into its own network
//! namespace (the mDNS daemon threads it starts inherit it), the two joined by a veth
//! pair. Needs root; without it the test skips loudly, or fails when `CI` is set.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use skiff_core::lan::{self, LanAdvert, LanEvent};
use skiff_core::Error;

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
                vec![format!("{ADDR_A}:7000").parse::<SocketAddr>().unwrap()]
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
