//! The real `skiff` binary run inside a lab host (`ip netns exec NS skiff --json …`), its
//! JSON events read on a thread with their arrival times, waited for with timeouts.

use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::lab::Lab;

pub const BIN: &str = env!("CARGO_BIN_EXE_skiff");
pub const MIB: u64 = 1 << 20;

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// A running `skiff` in a lab namespace.
pub struct Proc {
    pub name: String,
    child: Child,
    rx: mpsc::Receiver<(Instant, Value)>,
    /// Every event read so far, with the time it arrived.
    pub seen: Vec<(Instant, Value)>,
    stderr: Arc<Mutex<String>>,
    eof: bool,
    status: Option<ExitStatus>,
}

pub fn ev_is(e: &Value, name: &str) -> bool {
    e["event"] == name
}

pub fn bytes_of(e: &Value) -> u64 {
    e["bytes"].as_u64().unwrap_or(0)
}

impl Proc {
    /// `ip netns exec <host> skiff --json ARGS…` with `SKIFF_DATA_DIR=data` and `envs`.
    pub fn spawn(
        lab: &Lab,
        host: &str,
        name: &str,
        data: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
    ) -> Proc {
        fs::create_dir_all(data).unwrap();
        let log = std::env::var("NETLAB_SKIFF_LOG").unwrap_or_else(|_| "info".into());
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &lab.ns(host), BIN, "--json"])
            .args(args)
            .env_remove("SKIFF_CODE")
            .env_remove("SKIFF_SIGNAL")
            .env("SKIFF_DATA_DIR", data)
            .env("XDG_CONFIG_HOME", data.join("config"))
            .env("SKIFF_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawning ip netns exec skiff");
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str::<Value>(&line)
                    .unwrap_or_else(|_| serde_json::json!({"event": "_not_json", "line": line}));
                if tx.send((Instant::now(), v)).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (err, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                // Bounded: keep the last ~1 MiB.
                if s.len() > 1 << 20 {
                    let cut = s.len() - (1 << 19);
                    let cut = (cut..s.len()).find(|&i| s.is_char_boundary(i)).unwrap_or(0);
                    s.drain(..cut);
                }
                s.push_str(&line);
                s.push('\n');
            }
        });
        eprintln!("netlab: {name} on {host}: skiff --json {}", args.join(" "));
        Proc {
            name: format!("{name}@{host}"),
            child,
            rx,
            seen: Vec::new(),
            stderr,
            eof: false,
            status: None,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The last events and the stderr tail, for failure messages.
    pub fn dump(&self) -> String {
        let evs: Vec<String> = self
            .seen
            .iter()
            .rev()
            .take(15)
            .rev()
            .map(|(_, v)| v.to_string())
            .collect();
        let err = self.stderr();
        let tail: String = {
            let mut start = err.len().saturating_sub(4000);
            while !err.is_char_boundary(start) {
                start += 1;
            }
            err[start..].to_owned()
        };
        format!(
            "--- {} ({} events, last 15):\n{}\n--- {} stderr tail:\n{}",
            self.name,
            self.seen.len(),
            evs.join("\n"),
            self.name,
            tail
        )
    }

    /// Takes every event already available without waiting.
    pub fn drain(&mut self) {
        loop {
            match self.rx.try_recv() {
                Ok(v) => self.seen.push(v),
                Err(mpsc::TryRecvError::Empty) => return,
                Err(mpsc::TryRecvError::Disconnected) => {
                    self.eof = true;
                    return;
                }
            }
        }
    }

    /// Waits for the next event matching `pred`; `Err` on timeout or when the output ends.
    pub fn try_wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Value, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eof {
                return Err(format!("{}: output ended before {what}", self.name));
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((t, v)) => {
                    self.seen.push((t, v.clone()));
                    if pred(&v) {
                        return Ok(v);
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(format!(
                        "{}: timed out after {timeout:?} waiting for {what}",
                        self.name
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => self.eof = true,
            }
        }
    }

    /// Like [`Proc::try_wait_for`], panicking with the process's output on failure.
    pub fn wait_for(
        &mut self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        match self.try_wait_for(what, timeout, pred) {
            Ok(v) => v,
            Err(e) => panic!("{e}\n{}", self.dump()),
        }
    }

    pub fn wait_event(&mut self, name: &str, timeout: Duration) -> Value {
        self.wait_for(name, timeout, |e| ev_is(e, name))
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        if self.status.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(s)) => {
                self.status = Some(s);
                false
            }
            _ => true,
        }
    }

    /// Waits for the process to exit (reading all its events); `None` on timeout.
    pub fn try_wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while !self.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(RecvTimeoutError::Disconnected) => self.eof = true,
                Err(RecvTimeoutError::Timeout) => return None,
            }
        }
        loop {
            if !self.running() {
                return self.status;
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit; kills it and panics on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        match self.try_wait_exit(timeout) {
            Some(st) => st,
            None => {
                self.kill9();
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.dump()
                );
            }
        }
    }

    /// Waits for a successful exit, panicking otherwise.
    pub fn expect_success(&mut self, timeout: Duration) {
        let st = self.wait_exit(timeout);
        assert!(
            st.success(),
            "{} exited with {st}\n{}",
            self.name,
            self.dump()
        );
    }

    /// SIGKILL, then reap; reads what it printed before dying.
    pub fn kill9(&mut self) {
        if self.running() {
            // SAFETY: a plain syscall on our own child's pid (not yet reaped). `ip netns
            // exec` execs skiff, so this pid is skiff itself.
            unsafe {
                libc::kill(self.pid(), libc::SIGKILL);
            }
            self.status = self.child.wait().ok();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.eof && Instant::now() < deadline {
            match self.rx.recv_timeout(Duration::from_millis(100)) {
                Ok(v) => self.seen.push(v),
                Err(RecvTimeoutError::Disconnected) => self.eof = true,
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }

    pub fn events(&self, name: &str) -> Vec<&Value> {
        self.seen
            .iter()
            .map(|(_, v)| v)
            .filter(|e| ev_is(e, name))
            .collect()
    }

    /// When the first event matching `pred` arrived.
    pub fn time_of(&self, pred: impl Fn(&Value) -> bool) -> Option<Instant> {
        self.seen.iter().find(|(_, v)| pred(v)).map(|(t, _)| *t)
    }

    /// The highest progress `bytes` seen so far.
    pub fn max_progress(&self) -> u64 {
        self.events("progress")
            .iter()
            .map(|e| bytes_of(e))
            .max()
            .unwrap_or(0)
    }

    /// Asserts every stdout line was one JSON object.
    pub fn assert_all_json(&self) {
        let bad = self.events("_not_json");
        assert!(
            bad.is_empty(),
            "{}: non-JSON stdout lines: {bad:?}",
            self.name
        );
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.running() {
            // SAFETY: as in kill9.
            unsafe {
                libc::kill(self.pid(), libc::SIGKILL);
            }
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", self.dump());
        }
    }
}

/// Writes `size` pseudo-random bytes (seeded; 1 MiB blocks); returns the SHA-256.
pub fn write_random(path: &Path, size: u64, seed: u64) -> String {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::io::BufWriter::with_capacity(MIB as usize, fs::File::create(path).unwrap());
    let mut buf = vec![0u8; MIB as usize];
    let mut hasher = Sha256::new();
    let mut left = size;
    while left > 0 {
        let n = left.min(MIB) as usize;
        rng.fill_bytes(&mut buf[..n]);
        hasher.update(&buf[..n]);
        f.write_all(&buf[..n]).unwrap();
        left -= n as u64;
    }
    f.flush().unwrap();
    hex::encode(hasher.finalize())
}

pub fn sha256_file(path: &Path) -> String {
    let mut f = fs::File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut buf = vec![0u8; MIB as usize];
    let mut hasher = Sha256::new();
    loop {
        let n = f.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    hex::encode(hasher.finalize())
}

/// Every name in `dir` (recursively, relative), sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(rd) = fs::read_dir(dir) else { return };
        for e in rd.flatten() {
            let p: PathBuf = e.path();
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            if p.is_dir() {
                walk(root, &p, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// A seed: `SKIFF_TEST_SEED` if set, else from the clock (printed, to replay a failure).
pub fn seed(test: &str) -> u64 {
    let seed = std::env::var("SKIFF_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
    eprintln!("{test}: SKIFF_TEST_SEED={seed}");
    seed
}
