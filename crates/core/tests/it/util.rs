//! Shared harness: a real `Node` in temporary folders, scripted hostile peers speaking the
//! wire protocol by hand, a transport tap that can replay, reorder or corrupt sealed
//! frames, and file-system snapshots proving that nothing outside the destination changed.

use std::collections::BTreeMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use skiff_core::crypto::Secret;
use skiff_core::events::Event;
use skiff_core::session::{self, Channel};
use skiff_core::transport::{tcp, Conn, FrameSink};
use skiff_core::{Config, Error, IncomingOffer, Node, Outcome, ReceiveOptions, Result};
use skiff_proto::code::ShareCode;
use skiff_proto::frame::{ChunkHeader, Plain, COUNTER_LEN};
use skiff_proto::handshake::DialHello;
use skiff_proto::manifest::{Entry, Manifest, CHUNK_SIZE};
use skiff_proto::peer::{ReceiverMsg, SenderMsg};
use tokio::net::TcpListener;

/// Upper bound for any single wait: a hang fails the test instead of blocking CI.
pub const WAIT: Duration = Duration::from_secs(20);
/// Reconnect window of receivers whose sender is expected to vanish after an attack.
pub const SHORT_RECONNECT: Duration = Duration::from_millis(100);

static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());
static HOOK: std::sync::Once = std::sync::Once::new();

/// Records every panic raised outside this test binary's own code (engine, proto, deps).
fn install_panic_hook() {
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let at = info
                .location()
                .map(|l| l.file().to_owned())
                .unwrap_or_default();
            if !at.contains("tests/it/") {
                if let Ok(mut p) = PANICS.lock() {
                    p.push(format!("{info}"));
                }
            }
            default(info);
        }));
    });
}

/// No code outside the tests panicked (in any test of this binary) so far.
#[track_caller]
pub fn assert_no_engine_panic() {
    let p = PANICS.lock().unwrap();
    assert!(p.is_empty(), "engine panicked: {p:?}");
}

/// Awaits `f` under [`WAIT`], panicking with `what` on a hang.
pub async fn within<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {WAIT:?}: {what}"),
    }
}

pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

pub fn sha_hex(data: &[u8]) -> String {
    hex::encode(sha256(data))
}

/// What `FileEnd` carries: SHA-256 over the file's chunk digests, in order (hex).
pub fn chunk_root(data: &[u8]) -> String {
    let mut root = Sha256::new();
    for c in data.chunks(CHUNK_SIZE as usize) {
        root.update(sha256(c));
    }
    hex::encode(root.finalize())
}

/// Deterministic, non-repeating test bytes.
pub fn bytes(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = sha256(&[seed]);
    while out.len() < len {
        out.extend_from_slice(&block);
        block = sha256(&block);
    }
    out.truncate(len);
    out
}

pub fn file(path: &str, size: u64) -> Entry {
    Entry::File {
        path: path.to_owned(),
        size,
        mode: 0o644,
        mtime: 1_700_000_000,
    }
}

pub fn dir(path: &str) -> Entry {
    Entry::Dir {
        path: path.to_owned(),
        mode: 0o755,
    }
}

pub fn manifest(entries: Vec<Entry>) -> Manifest {
    Manifest {
        chunk_size: CHUNK_SIZE,
        entries,
    }
}

pub fn new_code() -> ShareCode {
    let mut rng = rand::thread_rng();
    ShareCode::generate(&ShareCode::random_nameplate(&mut rng), &mut rng).unwrap()
}

/// The same nameplate with other words: what a user who mistyped the code has.
pub fn wrong_code(code: &ShareCode) -> ShareCode {
    loop {
        let mut rng = rand::thread_rng();
        let other = ShareCode::generate(code.nameplate(), &mut rng).unwrap();
        if other.password() != code.password() {
            return other;
        }
    }
}

/// A recursive description of a tree (no symlink is followed): path → kind, size, digest.
pub type Snapshot = BTreeMap<PathBuf, String>;

pub fn snapshot(root: &Path, skip: &[&Path]) -> Snapshot {
    fn walk(p: &Path, root: &Path, skip: &[&Path], out: &mut Snapshot) {
        if skip.contains(&p) {
            return;
        }
        let rel = p.strip_prefix(root).unwrap().to_owned();
        let Ok(meta) = std::fs::symlink_metadata(p) else {
            return;
        };
        let ft = meta.file_type();
        use std::os::unix::fs::MetadataExt;
        let desc = if ft.is_symlink() {
            format!("link -> {}", std::fs::read_link(p).unwrap().display())
        } else if ft.is_dir() {
            format!("dir {:o}", meta.mode())
        } else {
            let data = std::fs::read(p).unwrap();
            format!(
                "file {:o} {} {} mtime {}",
                meta.mode(),
                data.len(),
                sha_hex(&data),
                meta.mtime()
            )
        };
        out.insert(rel, desc);
        if ft.is_dir() {
            let mut names: Vec<_> = std::fs::read_dir(p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            for n in names {
                walk(&n, root, skip, out);
            }
        }
    }
    let mut out = Snapshot::new();
    walk(root, root, skip, &mut out);
    out
}

/// Relative paths of everything below `dir` (not following symlinks), sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    snapshot(dir, &[])
        .into_keys()
        .filter(|p| !p.as_os_str().is_empty())
        .map(|p| p.to_string_lossy().into_owned())
        .collect()
}

/// A test world: `home/` holds the destination `home/dest`, a canary folder with a fake
/// `.ssh/authorized_keys`, a source folder and the node's default download folder; the
/// node's state lives in `state/`, next to `home`.
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub home: PathBuf,
    pub dest: PathBuf,
    pub canary: PathBuf,
    pub src: PathBuf,
    pub data: PathBuf,
    pub node: Node,
    before: Snapshot,
}

impl Env {
    pub async fn new() -> Env {
        install_panic_hook();
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        let dest = home.join("dest");
        let canary = home.join("canary");
        let src = home.join("src");
        let data = tmp.path().join("state");
        for d in [&dest, &canary.join(".ssh"), &src, &data] {
            std::fs::create_dir_all(d).unwrap();
        }
        std::fs::write(
            canary.join(".ssh/authorized_keys"),
            b"ssh-ed25519 AAAA canary\n",
        )
        .unwrap();
        std::fs::write(canary.join("x"), b"canary x\n").unwrap();
        std::fs::write(home.join("x"), b"home x\n").unwrap();
        std::fs::write(home.join("secret.txt"), b"TOP-SECRET-MARKER-7f3a9c").unwrap();
        let node = spawn_node(&data, &home).await;
        let mut env = Env {
            tmp,
            home,
            dest,
            canary,
            src,
            data,
            node,
            before: Snapshot::new(),
        };
        env.mark();
        env
    }

    /// Takes the "before" snapshot of everything outside the destination folder.
    pub fn mark(&mut self) {
        self.before = self.outside();
    }

    fn outside(&self) -> Snapshot {
        snapshot(self.tmp.path(), &[&self.dest, &self.data])
    }

    /// Nothing outside `dest` (and the node's own state folder) changed since [`Env::mark`].
    pub fn assert_outside_untouched(&self) {
        let after = self.outside();
        assert_eq!(
            self.before, after,
            "something outside the destination changed"
        );
        assert_no_engine_panic();
    }

    pub fn opts(&self, addr: &str, reconnect_for: Duration) -> ReceiveOptions {
        ReceiveOptions {
            connect: addr.to_owned(),
            dir: Some(self.dest.clone()),
            auto_accept: true,
            reconnect_for,
            ..Default::default()
        }
    }

    pub async fn receive(
        &self,
        code: &ShareCode,
        addr: &str,
        reconnect_for: Duration,
    ) -> Result<IncomingOffer> {
        within(
            "node.receive",
            self.node
                .receive(&code.to_string(), self.opts(addr, reconnect_for)),
        )
        .await
    }

    pub async fn wait(&self, id: &str) -> Outcome {
        let out = within("node.wait", self.node.wait(id)).await.unwrap();
        assert_no_engine_panic();
        out
    }

    /// Stops the node and opens the same state folder again: the checkpoint must load.
    pub async fn restart(&mut self) {
        within("shutdown", self.node.shutdown()).await;
        self.node = spawn_node(&self.data, &self.home).await;
    }

    /// A normal transfer between this node (receiving) and a fresh sending node works.
    pub async fn assert_normal_transfer_works(&self) {
        let other = tempfile::tempdir().unwrap();
        let sender = spawn_node(&other.path().join("state"), other.path()).await;
        let src = other.path().join("hello.txt");
        let data = bytes(1234, 42);
        std::fs::write(&src, &data).unwrap();
        let started = within(
            "send",
            sender.send(
                vec![src],
                skiff_core::SendOptions {
                    listen: "127.0.0.1:0".into(),
                    ..Default::default()
                },
            ),
        )
        .await
        .unwrap();
        let code = ShareCode::parse(&started.code).unwrap();
        let offer = self
            .receive(&code, &started.listen, Duration::from_secs(2))
            .await
            .unwrap();
        let out = self.wait(&offer.id).await;
        let Outcome::Done { files, .. } = out else {
            panic!("normal transfer failed: {out:?}");
        };
        assert_eq!(files.len(), 1);
        let got = std::fs::read(self.dest.join(&files[0].path)).unwrap();
        assert_eq!(got, data);
        std::fs::remove_file(self.dest.join(&files[0].path)).unwrap();
        assert!(matches!(
            within("sender wait", sender.wait(&started.id))
                .await
                .unwrap(),
            Outcome::Done { .. }
        ));
        within("sender shutdown", sender.shutdown()).await;
    }
}

pub async fn spawn_node(data: &Path, home: &Path) -> Node {
    let mut config = Config::new(Some(data.to_owned()));
    config.download_dir = home.join("Downloads");
    config.device_name = "test-device".into();
    Node::spawn(config).await.unwrap()
}

#[track_caller]
pub fn assert_failed(out: &Outcome, kind: &str) {
    match out {
        Outcome::Failed {
            kind: k, message, ..
        } => {
            assert_eq!(k, kind, "wrong kind; message: {message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected a failure {kind:?}, got {other:?}"),
    }
}

#[track_caller]
pub fn assert_err(r: Result<impl std::fmt::Debug>, kind: &str) -> Error {
    match r {
        Err(e) => {
            assert_eq!(e.code(), kind, "wrong error: {e}");
            e
        }
        Ok(v) => panic!("expected an error {kind:?}, got {v:?}"),
    }
}

/// Every `Error` event for `transfer` seen so far on `rx`.
pub fn error_kinds(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    transfer: &str,
) -> Vec<String> {
    use tokio::sync::broadcast::error::TryRecvError;
    let mut out = Vec::new();
    loop {
        match rx.try_recv() {
            Ok(Event::Error {
                transfer: Some(t),
                kind,
                ..
            }) if t == transfer => out.push(kind),
            Ok(_) | Err(TryRecvError::Lagged(_)) => {}
            Err(_) => return out,
        }
    }
}

/// Waits for an `Error` event of `kind` for `transfer`.
pub async fn wait_error_event(
    rx: &mut tokio::sync::broadcast::Receiver<Event>,
    transfer: &str,
    kind: &str,
) {
    within(&format!("error event {kind}"), async {
        loop {
            match rx.recv().await {
                Ok(Event::Error {
                    transfer: Some(t),
                    kind: k,
                    ..
                }) if t == transfer && k == kind => return,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
}

// ------------------------------------------------------------------ frame tap

/// Rewrites each sealed frame into the frames actually written (none, one, several).
pub type Rewrite = Box<dyn FnMut(Vec<u8>) -> Vec<Vec<u8>> + Send>;

/// A handle on the frames a scripted peer writes, after sealing.
#[derive(Clone, Default)]
pub struct Tap(Arc<Mutex<Option<Rewrite>>>);

impl Tap {
    pub fn set(&self, f: impl FnMut(Vec<u8>) -> Vec<Vec<u8>> + Send + 'static) {
        *self.0.lock().unwrap() = Some(Box::new(f));
    }

    pub fn clear(&self) {
        *self.0.lock().unwrap() = None;
    }

    /// Wraps a connection so that every frame it sends passes through this tap.
    pub fn wrap(&self, conn: Conn) -> Conn {
        Conn {
            sink: Box::new(TapSink {
                inner: conn.sink,
                tap: self.clone(),
            }),
            ..conn
        }
    }
}

struct TapSink {
    inner: Box<dyn FrameSink>,
    tap: Tap,
}

#[async_trait]
impl FrameSink for TapSink {
    async fn send(&mut self, frame: Vec<u8>) -> Result<()> {
        let frames = match self.tap.0.lock().unwrap().as_mut() {
            Some(f) => f(frame),
            None => vec![frame],
        };
        for f in frames {
            self.inner.send(f).await?;
        }
        Ok(())
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}

// ------------------------------------------------------------------ hostile sender

/// A listening hostile sender that has not been dialed yet.
pub struct Listener {
    pub listener: TcpListener,
    pub addr: String,
    pub code: ShareCode,
}

pub async fn hostile_sender() -> Listener {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    Listener {
        listener,
        addr,
        code: new_code(),
    }
}

impl Listener {
    /// Accepts one dial and completes the PAKE with `code`.
    pub async fn accept_one(&self, code: &ShareCode) -> Result<Script> {
        let (stream, _) = self
            .listener
            .accept()
            .await
            .map_err(|e| Error::InvalidInput {
                reason: e.to_string(),
            })?;
        let (stream, raw) = split_raw(stream)?;
        let tap = Tap::default();
        let mut conn = tap.wrap(tcp::wrap(stream));
        let DialHello::Pake { msg, .. } = session::read_hello(&mut conn).await? else {
            return Err(proto_err("expected a PAKE hello"));
        };
        let (ch, secret) = session::accept_pake(conn, code, &msg).await?;
        Ok(Script {
            ch,
            tap,
            raw,
            secret,
            transfer: String::new(),
            credit: 0,
        })
    }

    /// Accepts one dial and answers its resume hello with `secret`.
    pub async fn accept_resume(&self, secret: &Secret) -> Result<Script> {
        let (stream, _) = self
            .listener
            .accept()
            .await
            .map_err(|e| Error::InvalidInput {
                reason: e.to_string(),
            })?;
        let (stream, raw) = split_raw(stream)?;
        let tap = Tap::default();
        let mut conn = tap.wrap(tcp::wrap(stream));
        let DialHello::Resume { nonce, .. } = session::read_hello(&mut conn).await? else {
            return Err(proto_err("expected a resume hello"));
        };
        let ch = session::accept_resume(conn, secret, &nonce).await?;
        Ok(Script {
            ch,
            tap,
            raw,
            secret: *secret,
            transfer: String::new(),
            credit: 0,
        })
    }

    /// Accepts once with the right code, then stops listening (later dials are refused).
    pub async fn accept(self) -> Result<Script> {
        let code = self.code.clone();
        self.accept_one(&code).await
    }
}

fn proto_err(reason: impl Into<String>) -> Error {
    Error::Protocol {
        reason: reason.into(),
    }
}

/// A second handle on the socket, for writing bytes that are not frames at all.
fn split_raw(
    stream: tokio::net::TcpStream,
) -> Result<(tokio::net::TcpStream, std::net::TcpStream)> {
    let io = |e: std::io::Error| Error::InvalidInput {
        reason: e.to_string(),
    };
    let std_stream = stream.into_std().map_err(io)?;
    let raw = std_stream.try_clone().map_err(io)?;
    Ok((
        tokio::net::TcpStream::from_std(std_stream).map_err(io)?,
        raw,
    ))
}

/// One authenticated session of a hostile sender.
pub struct Script {
    pub ch: Channel,
    pub tap: Tap,
    /// The same socket, to write raw bytes between frames (only while no frame is in flight).
    pub raw: std::net::TcpStream,
    pub secret: Secret,
    pub transfer: String,
    /// Credit granted so far.
    pub credit: u64,
}

impl Script {
    pub async fn send(&mut self, m: &SenderMsg) -> Result<()> {
        self.ch.tx.send_control(&m.encode()).await
    }

    /// Offers `m` under a fresh transfer id.
    pub async fn offer(&mut self, m: &Manifest) -> Result<()> {
        if self.transfer.is_empty() {
            self.transfer = hex::encode(rand::random::<[u8; 16]>());
        }
        let offer = SenderMsg::Offer {
            transfer: self.transfer.clone(),
            sender: "hostile".into(),
            manifest: m.clone(),
        };
        self.send(&offer).await
    }

    /// The next message from the receiver; `None` once it closed the connection.
    pub async fn recv(&mut self) -> Result<Option<ReceiverMsg>> {
        let frame = match tokio::time::timeout(WAIT, self.ch.rx.recv()).await {
            Err(_) => {
                return Err(Error::Timeout {
                    what: "waiting for the receiver",
                })
            }
            Ok(Err(Error::ConnectionClosed)) => return Ok(None),
            Ok(r) => r?,
        };
        let Some(frame) = frame else { return Ok(None) };
        match Plain::parse(&frame[COUNTER_LEN..]).map_err(|e| proto_err(e.to_string()))? {
            Plain::Control(body) => {
                let m = ReceiverMsg::decode(body).map_err(|e| proto_err(e.to_string()))?;
                if let ReceiverMsg::Credit { bytes } = m {
                    self.credit += bytes;
                }
                Ok(Some(m))
            }
            Plain::Chunk { .. } => Err(proto_err("the receiver sent file data")),
        }
    }

    /// Reads messages until `pick` returns `Some`, skipping credit grants and `FileOk`.
    pub async fn until<T>(&mut self, mut pick: impl FnMut(&ReceiverMsg) -> Option<T>) -> Result<T> {
        loop {
            match self.recv().await? {
                None => return Err(Error::ConnectionClosed),
                Some(m) => {
                    if let Some(t) = pick(&m) {
                        return Ok(t);
                    }
                    if !matches!(m, ReceiverMsg::Credit { .. } | ReceiverMsg::FileOk { .. }) {
                        return Err(proto_err(format!("unexpected {m:?}")));
                    }
                }
            }
        }
    }

    /// Waits for `Accept` and the first credit grant.
    pub async fn accepted(&mut self) -> Result<Vec<skiff_proto::peer::Have>> {
        let have = self
            .until(|m| match m {
                ReceiverMsg::Accept { have } => Some(have.clone()),
                _ => None,
            })
            .await?;
        self.until(|m| matches!(m, ReceiverMsg::Credit { .. }).then_some(()))
            .await?;
        Ok(have)
    }

    /// Waits for the receiver's `Error` message and returns its kind (`None` if it
    /// closed without one).
    pub async fn error_kind(&mut self) -> Option<String> {
        loop {
            match self.recv().await {
                Ok(Some(ReceiverMsg::Error { kind, .. })) => return Some(kind),
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Sends a chunk whose header claims `sha`.
    pub async fn chunk_with(
        &mut self,
        file: u32,
        index: u64,
        data: &[u8],
        sha: [u8; 32],
    ) -> Result<()> {
        let mut f = session::frame_buffer(1 + skiff_proto::frame::CHUNK_HEADER_LEN + data.len());
        ChunkHeader {
            file,
            index,
            sha256: sha,
        }
        .write_prefix(&mut f);
        f.extend_from_slice(data);
        self.ch.tx.send_frame(f).await
    }

    /// Sends a correct chunk.
    pub async fn chunk(&mut self, file: u32, index: u64, data: &[u8]) -> Result<()> {
        self.chunk_with(file, index, data, sha256(data)).await
    }

    /// Sends all of `data` as file `file`, then its `FileEnd`.
    pub async fn send_file(&mut self, file: u32, data: &[u8]) -> Result<()> {
        for (i, c) in data.chunks(CHUNK_SIZE as usize).enumerate() {
            self.chunk(file, i as u64, c).await?;
        }
        self.send(&SenderMsg::FileEnd {
            file,
            sha256: chunk_root(data),
        })
        .await
    }

    /// Honestly serves `files` (entry index, contents) and waits for `Complete`.
    pub async fn serve(&mut self, files: &[(u32, Vec<u8>)]) -> Result<()> {
        for (i, data) in files {
            self.send_file(*i, data).await?;
        }
        self.until(|m| matches!(m, ReceiverMsg::Complete).then_some(()))
            .await
    }
}
