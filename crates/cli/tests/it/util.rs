//! Test harness: runs the real `skiff` binary with temporary data dirs, reads its `--json`
//! events on a thread, and waits for them with timeouts so a hang fails instead of blocking.

use std::collections::{BTreeMap, HashSet};
use std::fs;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rand::{Rng, RngCore, SeedableRng};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub const BIN: &str = env!("CARGO_BIN_EXE_skiff");
pub const MIB: u64 = 1 << 20;

/// Serialises the tests that move hundreds of MiB, so that they do not fight over the
/// two cores and the disk (the light tests still run alongside).
pub fn heavy() -> MutexGuard<'static, ()> {
    static HEAVY: Mutex<()> = Mutex::new(());
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// A port on 127.0.0.1 that is free now, never handed out twice in this process, and
/// outside the usual ephemeral range (so outgoing connections do not take it meanwhile).
pub fn free_port() -> u16 {
    static TAKEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    let mut taken = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    let taken = taken.get_or_insert_with(HashSet::new);
    let mut rng = rand::thread_rng();
    for _ in 0..10_000 {
        let port = rng.gen_range(20_000..32_000u16);
        if taken.contains(&port) {
            continue;
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            taken.insert(port);
            return port;
        }
    }
    panic!("no free port found");
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("skiff-it-")
        .tempdir()
        .expect("creating a temp dir")
}

/// A seed for randomised tests: `SKIFF_TEST_SEED` if set, else from the clock (printed).
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

/// Writes `size` pseudo-random bytes (fast seeded RNG, 1 MiB blocks); returns the SHA-256.
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

/// One entry of a folder tree, as compared after a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir,
    File { len: u64, sha256: String, mode: u32 },
    Other(String),
}

/// Every entry below `root` (relative paths with `/`), with contents hashed.
pub fn tree(root: &Path) -> BTreeMap<String, Node> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Node>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                out.insert(rel, Node::Dir);
                walk(root, &p, out);
            } else if m.is_file() {
                out.insert(
                    rel,
                    Node::File {
                        len: m.len(),
                        sha256: sha256_file(&p),
                        mode: m.permissions().mode() & 0o777,
                    },
                );
            } else {
                out.insert(rel, Node::Other(format!("{:?}", m.file_type())));
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// Asserts two trees are identical: the same names, kinds, contents and modes.
pub fn assert_same_tree(want: &Path, got: &Path) {
    let (a, b) = (tree(want), tree(got));
    let mut diffs = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => diffs.push(format!("missing: {k}")),
            Some(w) if w != v => diffs.push(format!("differs: {k}: want {v:?}, got {w:?}")),
            _ => {}
        }
    }
    for k in b.keys() {
        if !a.contains_key(k) {
            diffs.push(format!("extra: {k}"));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} entries differ between {} and {}:\n{}",
        diffs.len(),
        a.len(),
        want.display(),
        got.display(),
        diffs
            .iter()
            .take(30)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
}

pub fn ev_is(e: &Value, name: &str) -> bool {
    e["event"] == name
}

pub fn bytes_of(e: &Value) -> u64 {
    e["bytes"].as_u64().unwrap_or(0)
}

/// A running `skiff` process with its JSON events.
pub struct Proc {
    pub name: String,
    pub argv: Vec<String>,
    child: Child,
    /// Open only for [`Launch::keep_stdin`].
    stdin: Option<ChildStdin>,
    rx: mpsc::Receiver<Value>,
    /// Every event read so far, in order.
    pub seen: Vec<Value>,
    stderr: Arc<Mutex<String>>,
    /// Disconnects when the stderr reader has read everything.
    stderr_eof: mpsc::Receiver<()>,
    eof: bool,
    status: Option<ExitStatus>,
}

/// How a test process is started, beyond what [`Proc::spawn`] does.
#[derive(Default, Clone, Copy)]
pub struct Launch<'a> {
    pub cwd: Option<&'a Path>,
    /// Put before the `skiff` binary, e.g. `["ip", "netns", "exec", NS]` (which execs, so
    /// the pid is still skiff's).
    pub wrapper: &'a [&'a str],
    /// Keep stdin open for [`Proc::write_stdin`] instead of closing it after `stdin`.
    pub keep_stdin: bool,
    /// Start in a new session, without a controlling terminal (so prompts read stdin,
    /// never the terminal the tests run in).
    pub setsid: bool,
}

/// How the receiver gets the code (never argv).
#[derive(Clone, Copy, Debug)]
pub enum CodeVia {
    Env,
    Stdin,
}

impl Proc {
    /// Runs `skiff --data-dir DATA --json ARGS…`; `stdin` is written then closed.
    pub fn spawn(
        name: &str,
        data: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Proc {
        Self::spawn_in(None, name, data, args, envs, stdin)
    }

    /// Like [`Proc::spawn`], in the working directory `cwd`.
    pub fn spawn_in(
        cwd: Option<&Path>,
        name: &str,
        data: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Proc {
        let launch = Launch {
            cwd,
            ..Launch::default()
        };
        Self::launch(launch, name, data, args, envs, stdin)
    }

    /// Like [`Proc::spawn`], started as `launch` says.
    pub fn launch(
        launch: Launch,
        name: &str,
        data: &Path,
        args: &[&str],
        envs: &[(&str, &str)],
        stdin: Option<&str>,
    ) -> Proc {
        let cwd = launch.cwd;
        let mut argv: Vec<String> = vec![
            "--data-dir".into(),
            data.display().to_string(),
            "--json".into(),
        ];
        argv.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = match launch.wrapper.split_first() {
            Some((prog, rest)) => {
                let mut c = Command::new(prog);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        if launch.setsid {
            use std::os::unix::process::CommandExt;
            // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        cmd.args(&argv)
            .env_remove("SKIFF_CODE")
            .env_remove("SKIFF_DATA_DIR")
            .env("SKIFF_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(if stdin.is_some() || launch.keep_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            });
        for (k, v) in envs {
            cmd.env(k, v);
        }
        if let Some(dir) = cwd {
            cmd.current_dir(dir);
        }
        let mut child = cmd.spawn().expect("spawning skiff");
        let mut kept = None;
        if let Some(mut si) = child.stdin.take() {
            if let Some(text) = stdin {
                si.write_all(text.as_bytes()).unwrap();
            }
            if launch.keep_stdin {
                kept = Some(si);
            } // else dropped: closed
        }
        let (tx, rx) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let v = serde_json::from_str::<Value>(&line)
                    .unwrap_or_else(|_| serde_json::json!({"event": "_not_json", "line": line}));
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let (err, sink) = (child.stderr.take().unwrap(), stderr.clone());
        let (stderr_done, stderr_eof) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let _done = stderr_done;
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
                s.push_str(&line);
                s.push('\n');
            }
        });
        let mut full: Vec<String> = launch.wrapper.iter().map(|s| s.to_string()).collect();
        full.push(BIN.to_string());
        full.extend(argv);
        Proc {
            name: name.to_owned(),
            argv: full,
            child,
            stdin: kept,
            rx,
            seen: Vec::new(),
            stderr,
            stderr_eof,
            eof: false,
            status: None,
        }
    }

    /// Writes to a stdin kept open ([`Launch::keep_stdin`]).
    pub fn write_stdin(&mut self, text: &str) {
        let si = self.stdin.as_mut().expect("stdin was not kept open");
        si.write_all(text.as_bytes()).unwrap();
        si.flush().unwrap();
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
            .map(|v| v.to_string())
            .collect();
        let err = self.stderr();
        let tail: String = err
            .chars()
            .rev()
            .take(3000)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
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
            let left = deadline.saturating_duration_since(Instant::now());
            if self.eof {
                return Err(format!("{}: output ended before {what}", self.name));
            }
            match self.rx.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
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

    /// Waits for the process to exit (reading all its events); kills it and panics on timeout.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        while !self.eof {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(v) => self.seen.push(v),
                Err(RecvTimeoutError::Disconnected) => self.eof = true,
                Err(RecvTimeoutError::Timeout) => {
                    self.kill9();
                    panic!(
                        "{} did not exit within {timeout:?}\n{}",
                        self.name,
                        self.dump()
                    );
                }
            }
        }
        loop {
            if !self.running() {
                // All of stderr too (a grandchild holding it open gets 2 s).
                let _ = self.stderr_eof.recv_timeout(Duration::from_secs(2));
                return self.status.unwrap();
            }
            if Instant::now() >= deadline {
                self.kill9();
                panic!(
                    "{} did not exit within {timeout:?}\n{}",
                    self.name,
                    self.dump()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
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
            // SAFETY: plain syscall on our own child's pid (not yet reaped).
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
        self.seen.iter().filter(|e| ev_is(e, name)).collect()
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
    }
}

/// `skiff send --direct 127.0.0.1:PORT PATHS…`, waiting for its code.
/// Returns the process, the code and the transfer id.
pub fn send(data: &Path, port: u16, paths: &[&Path]) -> (Proc, String, String) {
    send_with(data, port, paths, &[])
}

/// [`send`] with more flags (e.g. `--limit-rate`).
pub fn send_with(
    data: &Path,
    port: u16,
    paths: &[&Path],
    extra: &[&str],
) -> (Proc, String, String) {
    let addr = format!("127.0.0.1:{port}");
    let mut args = vec!["send", "--direct", &addr];
    args.extend_from_slice(extra);
    let ps: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    args.extend(ps.iter().map(String::as_str));
    let mut p = Proc::spawn("sender", data, &args, &[], None);
    let ev = p.wait_event("code", Duration::from_secs(30));
    let code = ev["code"].as_str().expect("code is a string").to_owned();
    let id = ev["transfer"]
        .as_str()
        .expect("transfer is a string")
        .to_owned();
    (p, code, id)
}

/// `skiff receive --direct 127.0.0.1:PORT --dir OUT --yes`, the code via env or stdin.
pub fn receive(data: &Path, port: u16, out: &Path, code: &str, via: CodeVia) -> Proc {
    receive_with(data, port, out, code, via, &[])
}

/// [`receive`] with more flags (e.g. `--limit-rate`).
pub fn receive_with(
    data: &Path,
    port: u16,
    out: &Path,
    code: &str,
    via: CodeVia,
    extra: &[&str],
) -> Proc {
    let addr = format!("127.0.0.1:{port}");
    let dir = out.display().to_string();
    let mut args = vec!["receive", "--direct", &addr, "--dir", &dir, "--yes"];
    args.extend_from_slice(extra);
    match via {
        CodeVia::Env => Proc::spawn("receiver", data, &args, &[("SKIFF_CODE", code)], None),
        CodeVia::Stdin => Proc::spawn("receiver", data, &args, &[], Some(&format!("{code}\n"))),
    }
}

/// `skiff resume [ID] [--wait SECS]`.
pub fn resume(name: &str, data: &Path, id: Option<&str>, wait: Option<u64>) -> Proc {
    resume_with(name, data, id, wait, &[])
}

/// [`resume`] with more flags (e.g. `--limit-rate`).
pub fn resume_with(
    name: &str,
    data: &Path,
    id: Option<&str>,
    wait: Option<u64>,
    extra: &[&str],
) -> Proc {
    let mut args = vec!["resume".to_string()];
    args.extend(id.map(str::to_owned));
    if let Some(w) = wait {
        args.push("--wait".into());
        args.push(w.to_string());
    }
    args.extend(extra.iter().map(|a| (*a).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::spawn(name, data, &args, &[], None)
}

/// `skiff list`: its `transfer` lines (asserts a clean exit).
pub fn list(data: &Path) -> Vec<Value> {
    let mut p = Proc::spawn("list", data, &["list"], &[], None);
    p.expect_success(Duration::from_secs(30));
    p.assert_all_json();
    p.events("transfer").into_iter().cloned().collect()
}

/// The single file a receiver's `done` event reports.
pub fn done_sha(done: &Value, path: &str) -> String {
    let files = done["files"].as_array().expect("done.files is an array");
    files
        .iter()
        .find(|f| f["path"] == path)
        .and_then(|f| f["sha256"].as_str())
        .unwrap_or_else(|| panic!("{path} not in done event {done}"))
        .to_owned()
}

/// Asserts the directory holds nothing (no file, no part file).
pub fn assert_empty_dir(dir: &Path) {
    let names: Vec<PathBuf> = match fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    assert!(
        names.is_empty(),
        "expected {} empty, found {names:?}",
        dir.display()
    );
}

pub fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}
