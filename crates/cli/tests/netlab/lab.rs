//! One NAT lab per test: `tests/netlab/netlab.sh up` under a prefix of its own, torn down
//! by [`Lab`]'s `Drop` (also when the test panics), plus the signaling server inside it.
//!
//! Namespaces are named `skl<pid>n<k>-<host>`: the test process's pid and a counter, so
//! concurrent runs never share a namespace, and a later run can tell the leftovers of a
//! crashed one (pid gone) and tear them down ([`collect_leftovers`]).

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

pub const SRV_IP: &str = "203.0.113.10";
pub const SIGNAL_PORT: u16 = 8080;
/// Where every lab's runtime files (coturn config, log, pid) live, one directory each.
const RUN_ROOT: &str = "/run/skiff-netlab";
const NS_TAG: &str = "skl";

/// The vendored lab script.
pub fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/netlab/netlab.sh")
}

/// `skiff-signal`, built next to `skiff` in the same target dir.
pub fn signal_bin() -> PathBuf {
    let skiff = Path::new(env!("CARGO_BIN_EXE_skiff"));
    let bin = skiff.with_file_name("skiff-signal");
    assert!(
        bin.is_file(),
        "{} is missing: the lab tests run the real signaling server. Build it first: \
         `cargo build -p skiff-signal` (CI's `cargo build --workspace --all-targets` does)",
        bin.display()
    );
    bin
}

/// One lab at a time in this process: the cases move real data through shaped links and
/// compare timings; running them side by side on two cores would only make them flaky.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
        .unwrap_or(false)
}

/// Why the lab cannot run here, if it cannot.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root (network namespaces, iptables and coturn need root)".into());
    }
    for cmd in ["ip", "iptables-restore", "turnserver", "tc", "bash"] {
        if !on_path(cmd) {
            return Some(format!(
                "`{cmd}` is not installed (scripts/setup-system.sh installs it)"
            ));
        }
    }
    match Command::new("ip").args(["netns", "list"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "`ip netns list` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("`ip netns list`: {e}")),
    }
}

fn pid_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Tears down labs left by test processes that are gone (crashed, killed, Ctrl-C).
pub fn collect_leftovers() {
    let Ok(rd) = fs::read_dir("/run/netns") else {
        return;
    };
    let mut stale = BTreeSet::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        // skl<pid>n<k>-<host>
        let Some(rest) = name.strip_prefix(NS_TAG) else {
            continue;
        };
        let Some((tag, _host)) = rest.split_once('-') else {
            continue;
        };
        let Some((pid, k)) = tag.split_once('n') else {
            continue;
        };
        let (Ok(pid), Ok(_)) = (pid.parse::<u32>(), k.parse::<u32>()) else {
            continue;
        };
        if !pid_alive(pid) {
            stale.insert(format!("{NS_TAG}{tag}"));
        }
    }
    for tag in stale {
        eprintln!("netlab: tearing down the leftover lab {tag}- of a test run that is gone");
        let _ = Command::new(script())
            .arg("down")
            .env("NETLAB_PREFIX", format!("{tag}-"))
            .env("NETLAB_RUN", format!("{RUN_ROOT}/{tag}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// A running lab. Dropping it runs `netlab.sh down`, which kills every process left in
/// its namespaces and deletes them, then removes the test's temp dir.
pub struct Lab {
    pub name: String,
    pub prefix: String,
    pub run: PathBuf,
    pub turn_secret: String,
    pub tmp: tempfile::TempDir,
    _serial: MutexGuard<'static, ()>,
}

impl Lab {
    /// Builds a lab (`netlab.sh up --turn-auth secret ARGS…`). `None` when the lab cannot
    /// run here and `CI` is unset (a loud skip); under `CI` that is a failure instead.
    pub fn up(name: &str, args: &[&str]) -> Option<Lab> {
        if let Some(why) = unavailable() {
            if std::env::var_os("CI").is_some() {
                panic!("netlab {name}: CI is set but the NAT lab cannot run: {why}");
            }
            // Straight to stderr, past the test harness's capture: a skip must be seen.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!!!!!!! SKIPPED netlab test {name}: {why}.\n\
                 !!!!!!!! The NAT lab tests ran NOTHING. Run them as root: \
                 sudo -E cargo test -p skiff --test netlab -- --include-ignored\n"
            );
            return None;
        }
        let serial = serial();
        static GC: Once = Once::new();
        GC.call_once(collect_leftovers);
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "{NS_TAG}{}n{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let tmp = tempfile::Builder::new()
            .prefix(&format!("skiff-netlab-{name}-"))
            .tempdir()
            .expect("creating a temp dir");
        let lab = Lab {
            name: name.to_owned(),
            prefix: format!("{tag}-"),
            run: PathBuf::from(format!("{RUN_ROOT}/{tag}")),
            turn_secret: hex::encode(rand::random::<[u8; 16]>()),
            tmp,
            _serial: serial,
        };
        let t0 = Instant::now();
        let mut full = vec!["up", "--turn-auth", "secret"];
        full.extend_from_slice(args);
        // From here on, Drop tears down whatever `up` built (it also cleans up itself).
        lab.script(&full);
        eprintln!(
            "netlab {name}: lab {} up ({}) in {:?}",
            lab.prefix,
            args.join(" "),
            t0.elapsed()
        );
        Some(lab)
    }

    fn command(&self) -> Command {
        let mut c = Command::new(script());
        c.env("NETLAB_PREFIX", &self.prefix)
            .env("NETLAB_RUN", &self.run)
            .env("NETLAB_TURN_SECRET", &self.turn_secret)
            .stdin(Stdio::null());
        c
    }

    /// Runs `netlab.sh ARGS…`, panicking with its output on failure.
    pub fn script(&self, args: &[&str]) -> String {
        let out = self
            .command()
            .args(args)
            .output()
            .expect("running netlab.sh");
        assert!(
            out.status.success(),
            "netlab.sh {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The namespace of a lab host (`peerA`, `srv`, …).
    pub fn ns(&self, host: &str) -> String {
        format!("{}{host}", self.prefix)
    }

    /// `ip netns exec <host> ARGS…`, waiting for it.
    pub fn exec(&self, host: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running ip netns exec")
    }

    /// Like [`Lab::exec`], panicking unless it succeeds.
    pub fn exec_ok(&self, host: &str, args: &[&str]) -> String {
        let out = self.exec(host, args);
        assert!(
            out.status.success(),
            "{host}: {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `netlab.sh shape ROUTER ARGS…`.
    pub fn shape(&self, router: &str, args: &[&str]) {
        let mut full = vec!["shape", router];
        full.extend_from_slice(args);
        self.script(&full);
    }

    /// Bytes received plus sent by srv's only interface so far. Signaling, STUN and ICE
    /// checks are a few KiB; anything relayed by coturn crosses it twice.
    pub fn srv_bytes(&self) -> u64 {
        self.script(&["relay-bytes"])
            .split_whitespace()
            .filter_map(|w| w.parse::<u64>().ok())
            .sum()
    }

    /// A fresh directory in the test's temp dir.
    pub fn dir(&self, name: &str) -> PathBuf {
        let d = self.tmp.path().join(name);
        fs::create_dir_all(&d).unwrap();
        d
    }

    pub fn coturn_log(&self) -> String {
        fs::read_to_string(self.run.join("turnserver.log")).unwrap_or_default()
    }

    /// What coturn's log says happened (allocations, permissions, channel binds, traffic).
    pub fn coturn_summary(&self) -> CoturnSummary {
        CoturnSummary::parse(&self.coturn_log())
    }

    /// The signaling server in `srv` on 203.0.113.10:8080, with this lab's TURN secret.
    pub fn signal(&self) -> Signal {
        Signal::start(self, SIGNAL_PORT)
    }

    pub fn signal_url(&self) -> String {
        format!("ws://{SRV_IP}:{SIGNAL_PORT}/ws")
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.coturn_log();
            let tail: Vec<&str> = log
                .lines()
                .filter(|l| !l.trim().is_empty())
                .rev()
                .take(40)
                .collect();
            let status = self
                .command()
                .arg("status")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            eprintln!(
                "--- netlab {} failed; lab status:\n{status}--- coturn log tail:\n{}",
                self.name,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let t0 = Instant::now();
        match self.command().arg("down").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => eprintln!(
                "netlab {}: down failed: {}",
                self.name,
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => eprintln!("netlab {}: down: {e}", self.name),
        }
        let left: Vec<String> = fs::read_dir("/run/netns")
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&self.prefix))
                    .collect()
            })
            .unwrap_or_default();
        if !left.is_empty() {
            eprintln!("netlab {}: namespaces left after down: {left:?}", self.name);
        }
        eprintln!("netlab {}: lab down in {:?}", self.name, t0.elapsed());
    }
}

/// Counts from coturn's (verbose) log.
#[derive(Debug, Default, Clone)]
pub struct CoturnSummary {
    pub allocations: usize,
    pub permissions: usize,
    pub channel_binds: usize,
    /// `peer usage` / `usage` lines (written when a session closes): total bytes.
    pub usage_bytes: u64,
    pub tcp_connects: usize,
}

impl CoturnSummary {
    fn parse(log: &str) -> Self {
        let mut s = CoturnSummary::default();
        for line in log.lines() {
            if line.contains("ALLOCATE processed, success") {
                s.allocations += 1;
            } else if line.contains("CREATE_PERMISSION processed, success") {
                s.permissions += 1;
            } else if line.contains("CHANNEL_BIND processed, success") {
                s.channel_binds += 1;
            } else if line.contains("CONNECT processed, success")
                || line.contains("CONNECTION_BIND processed, success")
            {
                s.tcp_connects += 1;
            }
            if line.contains("peer usage:") {
                for field in ["rb=", "sb="] {
                    if let Some(rest) = line.split(field).nth(1) {
                        let n: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
                        s.usage_bytes += n.parse::<u64>().unwrap_or(0);
                    }
                }
            }
        }
        s
    }
}

/// `skiff-signal` in the lab's `srv` namespace. Killed when dropped.
pub struct Signal {
    ns: String,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Signal {
    fn start(lab: &Lab, port: u16) -> Signal {
        let config = lab.tmp.path().join("skiff-signal.toml");
        fs::write(
            &config,
            format!(
                "listen = \"{SRV_IP}:{port}\"\n\
                 # the tampering proxy runs on srv and says who its client is\n\
                 trusted_proxies = [\"{SRV_IP}\"]\n\
                 [turn]\n\
                 secret = \"{secret}\"\n\
                 urls = [\"stun:{SRV_IP}:3478\", \"turn:{SRV_IP}:3478?transport=udp\", \
                 \"turn:{SRV_IP}:3478?transport=tcp\", \"turns:{SRV_IP}:5349?transport=tcp\"]\n\
                 ttl_secs = 3600\n",
                secret = lab.turn_secret
            ),
        )
        .unwrap();
        let mut s = Signal {
            ns: lab.ns("srv"),
            port,
            config,
            log: lab.tmp.path().join("skiff-signal.log"),
            child: None,
            starts: 0,
        };
        s.restart();
        s
    }

    fn listening(&self) -> bool {
        let filter = format!("sport = :{}", self.port);
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "ss", "-Hltn", &filter])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false)
    }

    /// Starts it (again) on the same address; waits until it listens.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the signaling server is running");
        self.starts += 1;
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let listen = format!("{SRV_IP}:{}", self.port);
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(signal_bin())
            .args(["--listen", &listen, "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("starting skiff-signal");
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.listening() {
            if let Ok(Some(st)) = child.try_wait() {
                panic!(
                    "skiff-signal exited with {st} before listening:\n{}",
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "skiff-signal did not listen on {listen} within 15 s:\n{}",
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// SIGKILL (a crash), and waits until the port is free.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.listening() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        let mut s = String::new();
        if let Ok(mut f) = fs::File::open(&self.log) {
            let _ = f.read_to_string(&mut s);
        }
        s
    }

    /// `GET /metrics`, fetched from inside srv (bash's /dev/tcp; no curl needed).
    pub fn metrics(&self) -> String {
        let script = format!(
            "exec 3<>/dev/tcp/{SRV_IP}/{}; printf 'GET /metrics HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n' >&3; timeout 5 cat <&3",
            self.port
        );
        Command::new("ip")
            .args(["netns", "exec", &self.ns, "bash", "-c", &script])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// The value of one metric (the first sample line that starts with `name`).
    pub fn metric(&self, name: &str) -> Option<f64> {
        self.metrics()
            .lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.split_whitespace().last())
            .and_then(|v| v.parse().ok())
    }
}

impl Drop for Signal {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!(
                "--- skiff-signal log tail ({} starts):\n{}",
                self.starts,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        self.kill();
    }
}
