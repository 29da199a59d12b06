//! The receiving side of one session: validate the offer, lay out local names, take
//! chunks within granted credit, verify, write, checkpoint, finish files.
//!
//! Owns: the receiver's half of the peer protocol and its durability order
//! (write chunk → fdatasync → commit rows, batched every `SYNC_BYTES` or `SYNC_INTERVAL`;
//! finish: fsync → verify the file digest → rename without replacing → fsync the folder).
//! Must not: write outside the destination folder, count a chunk before its hash matched,
//! or let the database get ahead of the data.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use rand::Rng;
use sha2::{Digest, Sha256};
use skiff_proto::frame::{Plain, COUNTER_LEN};
use skiff_proto::manifest::{chunk_count, chunk_len, Entry, Manifest, CHUNK_SIZE};
use skiff_proto::peer::{encode_bitmap, Have, ReceiverMsg, SenderMsg};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::events::{DoneFile, Event, Events, Progress};
use crate::fsx::{finish_metadata, part_name, DestDir};
use crate::names::{numbered, sanitize_path, NameDeduper};
use crate::session::Channel;
use crate::store::{RecvFileRow, Store};
use crate::{Error, Result};

/// Bytes written between two fdatasync + commit points (bounds what is re-sent after a crash).
pub const SYNC_BYTES: u64 = 8 << 20;
/// Longest time between two sync points while data flows.
pub const SYNC_INTERVAL: Duration = Duration::from_secs(1);
/// Credit window granted to the sender: unverified data in flight stays below this.
pub const WINDOW: u64 = 16 << 20;
/// A chunk that fails its hash this many times fails the transfer.
pub const MAX_CHUNK_TRIES: u32 = 3;
/// No frame for this long means the connection is dead.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Local layout of one entry.
#[derive(Debug, Clone)]
pub struct LocalEntry {
    pub dir: Vec<String>,
    pub name: String,
}

/// Checks an offer before anything is shown or written: limits, chunk size, sizes, and
/// every path through the sanitiser. Returns the sanitised relative paths.
pub fn check_offer(transfer: &str, m: &Manifest) -> Result<Vec<Vec<String>>> {
    if transfer.len() != 32 || !transfer.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::BadOffer {
            reason: "malformed transfer id".into(),
        });
    }
    if m.chunk_size != CHUNK_SIZE {
        return Err(Error::BadOffer {
            reason: format!("chunk size {} is not {CHUNK_SIZE}", m.chunk_size),
        });
    }
    if m.total_bytes().is_none() {
        return Err(Error::OfferTooLarge {
            reason: "the declared sizes overflow".into(),
        });
    }
    if m.entries.is_empty() {
        return Err(Error::BadOffer {
            reason: "the offer is empty".into(),
        });
    }
    let mut raw_seen = HashSet::new();
    let mut dirs: HashSet<Vec<String>> = HashSet::new();
    let mut out = Vec::with_capacity(m.entries.len());
    for e in &m.entries {
        let comps = sanitize_path(e.path())?;
        let raw: Vec<&str> = e.path().split('/').collect();
        if !raw_seen.insert(raw.join("/")) {
            return Err(Error::BadOffer {
                reason: format!("{:?} is listed twice", e.path()),
            });
        }
        if raw.len() > 1 {
            let parent: Vec<String> = raw[..raw.len() - 1].iter().map(|s| s.to_string()).collect();
            if !dirs.contains(&parent) {
                return Err(Error::BadOffer {
                    reason: format!(
                        "{:?} is not inside a folder listed before it (or its folder is a file)",
                        e.path()
                    ),
                });
            }
        }
        if matches!(e, Entry::Dir { .. }) {
            dirs.insert(raw.iter().map(|s| s.to_string()).collect());
        }
        out.push(comps);
    }
    Ok(out)
}

/// Chooses local names: sanitised, de-duplicated case-insensitively, and never clashing
/// with anything already in the destination (`name (1).ext`).
pub fn plan(m: &Manifest, sanitised: &[Vec<String>], dest: &DestDir) -> Result<Vec<LocalEntry>> {
    let root = dest.dir(&[], false)?;
    // Raw parent path -> (local path, deduper of its children).
    let mut dirs: HashMap<Vec<String>, (Vec<String>, NameDeduper)> = HashMap::new();
    dirs.insert(Vec::new(), (Vec::new(), NameDeduper::new()));
    let mut out = Vec::with_capacity(m.entries.len());
    for (e, comps) in m.entries.iter().zip(sanitised) {
        let raw: Vec<String> = e.path().split('/').map(str::to_owned).collect();
        let parent_raw = raw[..raw.len() - 1].to_vec();
        let Some(last) = comps.last() else {
            return Err(Error::BadOffer {
                reason: "empty path".into(),
            });
        };
        let (parent_local, dedup) = dirs.get_mut(&parent_raw).ok_or_else(|| Error::BadOffer {
            reason: format!("{:?} has no folder", e.path()),
        })?;
        let parent_local = parent_local.clone();
        let mut name = dedup.unique(last);
        if parent_local.is_empty() {
            // Top level: also avoid what is already in the destination.
            let base = name.clone();
            let mut n = 0;
            while DestDir::exists(&root, &name) || DestDir::exists(&root, &part_name(&name)) {
                n += 1;
                name = dedup.unique(&numbered(&base, n));
            }
        }
        if matches!(e, Entry::Dir { .. }) {
            let mut local = parent_local.clone();
            local.push(name.clone());
            dirs.insert(raw, (local, NameDeduper::new()));
        }
        out.push(LocalEntry {
            dir: parent_local,
            name,
        });
    }
    Ok(out)
}

/// Creates the planned folders (top-level ones must be new).
pub fn create_dirs(m: &Manifest, layout: &[LocalEntry], dest: &DestDir) -> Result<()> {
    for (e, l) in m.entries.iter().zip(layout) {
        if matches!(e, Entry::Dir { .. }) {
            let parent = dest.dir(&l.dir, true)?;
            if !DestDir::mkdir_new(&parent, &l.name)? && l.dir.is_empty() {
                return Err(Error::BadOffer {
                    reason: format!("{} appeared in the download folder meanwhile", l.name),
                });
            }
        }
    }
    Ok(())
}

/// Checks that `needed` bytes fit, keeping the reserve free.
pub fn check_space(dest: &DestDir, needed: u64) -> Result<()> {
    let (free, _) = dest.space()?;
    let usable = free.saturating_sub(dest.reserve()?);
    if needed > usable {
        return Err(Error::NoSpace { needed, free });
    }
    Ok(())
}

fn local_rel(f: &RecvFileRow) -> String {
    if f.local_dir.is_empty() {
        f.local_name.clone()
    } else {
        format!("{}/{}", f.local_dir, f.local_name)
    }
}

fn split_dir(dir: &str) -> Vec<String> {
    if dir.is_empty() {
        Vec::new()
    } else {
        dir.split('/').map(str::to_owned).collect()
    }
}

/// What the receiver holds of each file, after re-checking the tail of every part file.
pub struct Holdings {
    pub have: Vec<Have>,
    /// Per entry: chunk bitmap (files only).
    pub bits: Vec<Option<Vec<bool>>>,
    pub held_bytes: u64,
    /// Bytes of files whose part file must still be created.
    pub unallocated: u64,
}

/// Loads the checkpoint for a resume; re-hashes the last 8 claimed chunks and a random 1 %.
pub fn load_holdings(store: &Store, id: &str, m: &Manifest, dest: &DestDir) -> Result<Holdings> {
    let rows = store.recv_files(id)?;
    let by_idx: HashMap<u32, &RecvFileRow> = rows.iter().map(|r| (r.idx, r)).collect();
    let mut h = Holdings {
        have: Vec::new(),
        bits: vec![None; m.entries.len()],
        held_bytes: 0,
        unallocated: 0,
    };
    let mut rng = rand::thread_rng();
    for (i, e) in m.entries.iter().enumerate() {
        let Entry::File { size, .. } = e else {
            continue;
        };
        let idx = i as u32;
        let row = by_idx
            .get(&idx)
            .ok_or_else(|| Error::protocol("checkpoint lacks a file row"))?;
        let n = chunk_count(*size, m.chunk_size);
        let complete = |h: &mut Holdings| {
            h.have.push(Have {
                file: idx,
                complete: true,
                chunks: String::new(),
            });
            h.held_bytes += size;
            h.bits[i] = Some(vec![true; n as usize]);
        };
        if row.done {
            complete(&mut h);
            continue;
        }
        let mut bits = vec![false; n as usize];
        let dir = dest.dir(&split_dir(&row.local_dir), true)?;
        let part_name = part_name(&row.local_name);
        let chunks = store.chunks(id, idx)?;
        if let Some(sha256) = renamed_before_crash(
            &dir,
            &row.local_name,
            &part_name,
            *size,
            m.chunk_size,
            &chunks,
        )? {
            // Killed between the rename and its record: the file is in place and verified.
            store.file_done(id, idx, Some(&sha256), None)?;
            complete(&mut h);
            continue;
        }
        match DestDir::open_part(&dir, &part_name)? {
            None => {
                store.clear_chunks(id, idx)?;
                h.unallocated += size;
            }
            Some(part) => {
                let mut bad = Vec::new();
                let len = chunks.len();
                let mut buf = vec![0u8; m.chunk_size as usize];
                for (k, (ci, sha)) in chunks.iter().enumerate() {
                    let Some(cl) = chunk_len(*size, m.chunk_size, *ci) else {
                        bad.push(*ci);
                        continue;
                    };
                    let check = k + 8 >= len || rng.gen_ratio(1, 100);
                    if check {
                        let b = &mut buf[..cl as usize];
                        let ok = part.read_exact_at(b, ci * u64::from(m.chunk_size)).is_ok()
                            && Sha256::digest(&*b).as_slice() == sha;
                        if !ok {
                            bad.push(*ci);
                            continue;
                        }
                    }
                    bits[*ci as usize] = true;
                    h.held_bytes += u64::from(cl);
                }
                if !bad.is_empty() {
                    tracing::warn!(
                        "{} chunks of {part_name} failed re-verification; fetching them again",
                        bad.len()
                    );
                    store.drop_chunks(id, idx, &bad)?;
                }
            }
        }
        let packed = pack(&bits);
        h.have.push(Have {
            file: idx,
            complete: false,
            chunks: encode_bitmap(&packed),
        });
        h.bits[i] = Some(bits);
    }
    Ok(h)
}

/// A file whose part file is gone but whose final name holds exactly the chunks the
/// checkpoint committed (every chunk's digest matches): it was renamed into place just
/// before a crash. Returns its content SHA-256 (hex).
fn renamed_before_crash(
    dir: &std::os::fd::OwnedFd,
    name: &str,
    part_name: &str,
    size: u64,
    chunk_size: u32,
    chunks: &[(u64, [u8; 32])],
) -> Result<Option<String>> {
    let n = chunk_count(size, chunk_size);
    if chunks.len() as u64 != n || DestDir::exists(dir, part_name) {
        return Ok(None);
    }
    let Some(file) = DestDir::open_part(dir, name).ok().flatten() else {
        return Ok(None);
    };
    if file.metadata().map(|m| m.len()).ok() != Some(size) {
        return Ok(None);
    }
    let mut content = Sha256::new();
    let mut buf = vec![0u8; chunk_size as usize];
    for (ci, sha) in chunks {
        let Some(len) = chunk_len(size, chunk_size, *ci) else {
            return Ok(None);
        };
        let b = &mut buf[..len as usize];
        if file.read_exact_at(b, ci * u64::from(chunk_size)).is_err()
            || Sha256::digest(&*b).as_slice() != sha
        {
            return Ok(None);
        }
        content.update(&*b);
    }
    Ok(Some(hex::encode(content.finalize())))
}

fn pack(bits: &[bool]) -> Vec<u8> {
    let mut out = vec![0u8; bits.len().div_ceil(8)];
    for (i, b) in bits.iter().enumerate() {
        if *b {
            out[i / 8] |= 1 << (i % 8);
        }
    }
    out
}

/// Everything a session needs to receive.
pub struct RecvCtx {
    pub store: Store,
    pub id: String,
    pub manifest: Manifest,
    pub dest: std::path::PathBuf,
    pub events: Events,
    pub cancel: CancellationToken,
    /// Node shutdown: disconnect without cancelling the transfer.
    pub shutdown: CancellationToken,
    /// Bytes per second, see [`crate::Config::max_rate`].
    pub max_rate: Option<u64>,
}

enum Work {
    Chunk {
        file: u32,
        index: u64,
        sha: [u8; 32],
        frame: Vec<u8>,
        start: usize,
    },
    FileEnd {
        file: u32,
        sha: [u8; 32],
    },
}

enum Report {
    Written {
        len: u64,
    },
    Bad {
        file: u32,
        index: u64,
        len: u64,
    },
    FileDone {
        file: u32,
        path: String,
        sha256: String,
    },
    Failed(Error),
}

async fn send_msg(ch: &mut Channel, m: &ReceiverMsg) -> Result<()> {
    ch.tx.send_control(&m.encode()).await
}

/// Maps an error the sender reported to ours.
pub fn remote_error(kind: String, message: String) -> Error {
    match kind.as_str() {
        "source_changed" => {
            // The message is the sender's whole sentence; keep only its path.
            let prefix = Error::SourceChanged {
                path: String::new(),
            }
            .to_string();
            let path = message.strip_prefix(prefix.as_str()).unwrap_or(&message);
            Error::SourceChanged {
                path: path.to_owned(),
            }
        }
        "cancelled" => Error::Cancelled,
        _ => Error::Remote { kind, message },
    }
}

/// Runs the data phase after `Accept { have }` was sent. Returns when every file is done.
pub async fn run(mut ch: Channel, ctx: RecvCtx, holdings: Holdings) -> Result<Vec<DoneFile>> {
    let RecvCtx {
        store,
        id,
        manifest,
        dest,
        events,
        cancel,
        shutdown,
        max_rate,
    } = ctx;
    let total = manifest.total_bytes().unwrap_or(0);
    let rows = store
        .call({
            let id = id.clone();
            move |s| s.recv_files(&id)
        })
        .await?;
    let mut done_files: Vec<DoneFile> = rows
        .iter()
        .filter(|r| r.done)
        .map(|r| DoneFile {
            path: local_rel(r),
            sha256: r.sha256.clone().unwrap_or_default(),
        })
        .collect();
    let files_total = manifest.file_count();
    let mut progress = Progress::new(&id, total, holdings.held_bytes);
    progress.flush(&events);
    if done_files.len() == files_total {
        send_msg(&mut ch, &ReceiverMsg::Complete).await?;
        ch.tx.close().await;
        return Ok(done_files);
    }

    let (work_tx, work_rx) = mpsc::channel::<Work>(8);
    let (rep_tx, mut rep_rx) = mpsc::unbounded_channel::<Report>();
    let writer_task = {
        let (store, id, manifest, bits) =
            (store.clone(), id.clone(), manifest.clone(), holdings.bits);
        tokio::task::spawn_blocking(move || {
            let writer = match DestDir::open(&dest)
                .and_then(|d| Writer::new(store, id, &manifest, &rows, bits, d))
            {
                Ok(w) => w,
                Err(e) => {
                    let _ = rep_tx.send(Report::Failed(clone_err(&e)));
                    return Err(e);
                }
            };
            writer.run(work_rx, rep_tx)
        })
    };

    let Channel { mut tx, rx, .. } = ch;
    let (frames, reader) = spawn_reader(rx);
    let mut frames = frames;
    let result: Result<()> = async {
        tx.send_control(&ReceiverMsg::Credit { bytes: WINDOW }.encode()).await?;
        let mut outstanding = WINDOW; // bytes the sender may still send
        let mut to_return = 0u64;
        let mut tries: HashMap<(u32, u64), u32> = HashMap::new();
        let mut pacer = crate::pace::Pacer::new(max_rate);
        loop {
            // Over the limit: leave frames unread (the sender runs out of window).
            let hold = pacer.hold();
            tokio::select! {
                biased;
                () = cancel.cancelled() => {
                    if shutdown.is_cancelled() {
                        return Err(Error::Interrupted);
                    }
                    let _ = tx.send_control(&ReceiverMsg::Cancel.encode()).await;
                    return Err(Error::Cancelled);
                }
                rep = rep_rx.recv() => match rep {
                    None => return Err(Error::protocol("writer stopped")),
                    Some(Report::Written { len }) => {
                        progress.add(len, &events);
                        to_return += len;
                        // A limited receiver returns credit per chunk, so a slow rate
                        // never leaves the sender waiting long enough to time out.
                        if to_return >= WINDOW / 4 || (max_rate.is_some() && to_return > 0) {
                            tx.send_control(&ReceiverMsg::Credit { bytes: to_return }.encode()).await?;
                            outstanding += to_return;
                            to_return = 0;
                        }
                    }
                    Some(Report::Bad { file, index, len }) => {
                        let n = tries.entry((file, index)).or_insert(0);
                        *n += 1;
                        if *n >= MAX_CHUNK_TRIES {
                            let path = manifest.entries.get(file as usize).map(|e| e.path().to_owned()).unwrap_or_default();
                            return Err(Error::CorruptData { path: crate::names::display_escape(&path), tries: *n });
                        }
                        tracing::warn!("chunk {index} of file {file} failed its hash; asking again");
                        tx.send_control(&ReceiverMsg::Retry { file, index }.encode()).await?;
                        tx.send_control(&ReceiverMsg::Credit { bytes: len }.encode()).await?;
                        outstanding += len;
                    }
                    Some(Report::FileDone { file, path, sha256 }) => {
                        tx.send_control(&ReceiverMsg::FileOk { file, sha256: sha256.clone() }.encode()).await?;
                        events.emit(Event::FileDone { transfer: id.clone(), path: path.clone(), sha256: sha256.clone() });
                        done_files.push(DoneFile { path, sha256 });
                        if done_files.len() == files_total {
                            tx.send_control(&ReceiverMsg::Complete.encode()).await?;
                            return Ok(());
                        }
                    }
                    Some(Report::Failed(e)) => return Err(e),
                },
                () = tokio::time::sleep_until(hold.unwrap_or_else(tokio::time::Instant::now)), if hold.is_some() => {}
                frame = tokio::time::timeout(STALL_TIMEOUT, frames.recv()), if hold.is_none() => {
                    let frame = match frame {
                        Err(_) => return Err(Error::Timeout { what: "waiting for data from the sender" }),
                        Ok(None) => return Err(Error::ConnectionClosed),
                        Ok(Some(f)) => f?,
                    };
                    pacer.record(frame.len() as u64);
                    match Plain::parse(&frame[COUNTER_LEN..]).map_err(|e| Error::protocol(e.to_string()))? {
                        Plain::Control(body) => match SenderMsg::decode(body).map_err(|e| Error::protocol(e.to_string()))? {
                            SenderMsg::FileEnd { file, sha256 } => {
                                let sha = skiff_proto::handshake::hex_field::<32>(&sha256).map_err(|e| Error::protocol(e.to_string()))?;
                                check_file(&manifest, file)?;
                                work_tx.send(Work::FileEnd { file, sha }).await.map_err(|_| Error::protocol("writer stopped"))?;
                            }
                            SenderMsg::Error { kind, message } => return Err(remote_error(kind, message)),
                            SenderMsg::Cancel => return Err(Error::Cancelled),
                            SenderMsg::Ping => {}
                            other => return Err(Error::protocol(format!("unexpected message {other:?}"))),
                        },
                        Plain::Chunk { header, data } => {
                            let size = check_file(&manifest, header.file)?;
                            let want = chunk_len(size, manifest.chunk_size, header.index)
                                .ok_or_else(|| Error::protocol(format!("chunk {} is past the end of file {}", header.index, header.file)))?;
                            if data.len() != want as usize {
                                return Err(Error::protocol(format!("chunk {} of file {} has {} bytes, expected {want}", header.index, header.file, data.len())));
                            }
                            let len = data.len() as u64;
                            if len > outstanding {
                                return Err(Error::protocol("the sender exceeded its credit"));
                            }
                            outstanding -= len;
                            let start = frame.len() - data.len();
                            work_tx
                                .send(Work::Chunk { file: header.file, index: header.index, sha: header.sha256, frame, start })
                                .await
                                .map_err(|_| Error::protocol("writer stopped"))?;
                        }
                    }
                }
            }
        }
    }
    .await;

    // Stop the writer: it syncs and commits what it has before returning.
    drop(work_tx);
    reader.abort();
    let writer_result = writer_task
        .await
        .map_err(|_| Error::protocol("writer task failed"))?;
    progress.flush(&events);
    match result {
        Ok(()) => {
            tx.close().await;
            writer_result?;
            Ok(done_files)
        }
        Err(e) => {
            if !matches!(
                e,
                Error::ConnectionClosed | Error::Cancelled | Error::Interrupted
            ) {
                let m = ReceiverMsg::Error {
                    kind: e.code().to_owned(),
                    message: e.to_string(),
                };
                let _ = tx.send_control(&m.encode()).await;
            }
            Err(e)
        }
    }
}

fn check_file(m: &Manifest, file: u32) -> Result<u64> {
    match m.entries.get(file as usize) {
        Some(Entry::File { size, .. }) => Ok(*size),
        _ => Err(Error::protocol(format!("no file with index {file}"))),
    }
}

/// Reads sealed frames in their own task, so that `select!` never cancels a half-read frame.
pub fn spawn_reader(
    mut rx: crate::session::SealedRx,
) -> (mpsc::Receiver<Result<Vec<u8>>>, tokio::task::JoinHandle<()>) {
    let (tx, frames) = mpsc::channel(4);
    let task = tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(Some(f)) => {
                    if tx.send(Ok(f)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    (frames, task)
}

struct WFile {
    size: u64,
    chunks: u64,
    have: Vec<bool>,
    have_count: u64,
    part: Option<std::fs::File>,
    dir: Vec<String>,
    name: String,
    mode: u32,
    mtime: i64,
    /// SHA-256 of each chunk as verified on arrival (zero = not held).
    digests: Vec<[u8; 32]>,
    /// Streaming SHA-256 of the content, over chunks `0..hashed`.
    hasher: Sha256,
    hashed: u64,
    /// The sender's chunk-list root, once `FileEnd` arrived.
    end: Option<[u8; 32]>,
    done: bool,
}

/// The blocking writer: verifies, writes and checkpoints chunks in arrival order.
struct Writer {
    store: Store,
    id: String,
    dest: DestDir,
    chunk_size: u32,
    files: Vec<Option<WFile>>,
    pending: Vec<(u32, u64, [u8; 32])>,
    pending_bytes: u64,
    dirty: HashSet<u32>,
    last_sync: Instant,
    scratch: Vec<u8>,
    syncer: Syncer,
}

/// One durability batch: the part files to fdatasync, then the chunk rows they make safe.
struct Batch {
    files: Vec<std::fs::File>,
    rows: Vec<(u32, u64, [u8; 32])>,
}

/// Background durability, so the writer keeps verifying and writing while the disk syncs.
/// At most one batch is in flight; its rows are committed only after all its syncs worked.
struct Syncer {
    tx: Option<std::sync::mpsc::SyncSender<Batch>>,
    done: std::sync::mpsc::Receiver<Result<()>>,
    in_flight: bool,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Syncer {
    fn new(store: Store, id: String) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(1);
        let (done_tx, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("skiff-sync".into())
            .spawn(move || {
                for batch in rx {
                    let r = batch
                        .files
                        .iter()
                        // A failed sync is fatal for these chunks: they are not committed.
                        .try_for_each(|f| {
                            f.sync_data()
                                .map_err(|e| Error::io("syncing received data", e))
                        })
                        .and_then(|()| store.put_chunks(&id, &batch.rows));
                    if done_tx.send(r).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| Error::io("starting the sync thread", e))?;
        Ok(Self {
            tx: Some(tx),
            done,
            in_flight: false,
            thread: Some(thread),
        })
    }

    /// Waits for the batch in flight, if any, and returns its result.
    fn wait(&mut self) -> Result<()> {
        if !self.in_flight {
            return Ok(());
        }
        self.in_flight = false;
        self.done
            .recv()
            .map_err(|_| Error::protocol("the sync thread stopped"))?
    }

    fn submit(&mut self, batch: Batch) -> Result<()> {
        self.wait()?;
        let tx = self
            .tx
            .as_ref()
            .ok_or_else(|| Error::protocol("the sync thread stopped"))?;
        tx.send(batch)
            .map_err(|_| Error::protocol("the sync thread stopped"))?;
        self.in_flight = true;
        Ok(())
    }
}

impl Drop for Syncer {
    fn drop(&mut self) {
        let _ = self.wait();
        self.tx = None; // ends the thread's loop
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Writer {
    fn new(
        store: Store,
        id: String,
        m: &Manifest,
        rows: &[RecvFileRow],
        bits: Vec<Option<Vec<bool>>>,
        dest: DestDir,
    ) -> Result<Self> {
        let (store_for_sync, id_for_sync) = (store.clone(), id.clone());
        let by_idx: HashMap<u32, &RecvFileRow> = rows.iter().map(|r| (r.idx, r)).collect();
        let mut files = Vec::with_capacity(m.entries.len());
        for (i, e) in m.entries.iter().enumerate() {
            let (
                Entry::File {
                    size, mode, mtime, ..
                },
                Some(row),
            ) = (e, by_idx.get(&(i as u32)))
            else {
                files.push(None);
                continue;
            };
            let chunks = chunk_count(*size, m.chunk_size);
            let have = bits
                .get(i)
                .cloned()
                .flatten()
                .unwrap_or_else(|| vec![false; chunks as usize]);
            let have_count = have.iter().filter(|b| **b).count() as u64;
            let mut digests = vec![[0u8; 32]; if row.done { 0 } else { chunks as usize }];
            if !row.done && have_count > 0 {
                for (ci, d) in store.chunks(&id, i as u32)? {
                    if let Some(slot) = digests.get_mut(ci as usize) {
                        *slot = d;
                    }
                }
            }
            files.push(Some(WFile {
                size: *size,
                chunks,
                have,
                have_count,
                part: None,
                dir: split_dir(&row.local_dir),
                name: row.local_name.clone(),
                mode: *mode,
                mtime: *mtime,
                digests,
                hasher: Sha256::new(),
                hashed: 0,
                end: None,
                done: row.done,
            }));
        }
        Ok(Self {
            store,
            id,
            dest,
            chunk_size: m.chunk_size,
            files,
            pending: Vec::new(),
            pending_bytes: 0,
            dirty: HashSet::new(),
            last_sync: Instant::now(),
            scratch: vec![0u8; m.chunk_size as usize],
            syncer: Syncer::new(store_for_sync, id_for_sync)?,
        })
    }

    fn run(
        mut self,
        mut work: mpsc::Receiver<Work>,
        reports: mpsc::UnboundedSender<Report>,
    ) -> Result<()> {
        let result = (|| {
            while let Some(w) = work.blocking_recv() {
                self.handle(w, &reports)?;
            }
            Ok(())
        })();
        // Whatever happened, make what is on disk count (or report why not).
        let synced = self.sync_now();
        if let Err(e) = &result {
            let _ = reports.send(Report::Failed(clone_err(e)));
        }
        result.and(synced)
    }

    fn handle(&mut self, w: Work, reports: &mpsc::UnboundedSender<Report>) -> Result<()> {
        match w {
            Work::Chunk {
                file,
                index,
                sha,
                frame,
                start,
            } => {
                let data = &frame[start..];
                let len = data.len() as u64;
                if Sha256::digest(data).as_slice() != sha {
                    let _ = reports.send(Report::Bad { file, index, len });
                    return Ok(());
                }
                let cs = u64::from(self.chunk_size);
                let duplicate = match self.files.get(file as usize).and_then(Option::as_ref) {
                    Some(f) => f.done || f.have.get(index as usize).copied().unwrap_or(true),
                    None => return Err(Error::protocol("chunk for an unknown file")),
                };
                if duplicate {
                    let _ = reports.send(Report::Written { len });
                    return Ok(());
                }
                let part = self.part(file)?;
                part.write_all_at(data, index * cs)
                    .map_err(|e| Error::io("writing a chunk", e))?;
                let behind = self
                    .files
                    .get(file as usize)
                    .and_then(Option::as_ref)
                    .is_some_and(|f| index > f.hashed);
                if behind {
                    self.advance_hash(file, reports)?;
                }
                let Some(f) = self.files.get_mut(file as usize).and_then(Option::as_mut) else {
                    return Err(Error::protocol("chunk for an unknown file"));
                };
                if index == f.hashed {
                    f.hasher.update(data);
                    f.hashed += 1;
                }
                f.have[index as usize] = true;
                f.have_count += 1;
                f.digests[index as usize] = sha;
                self.pending.push((file, index, sha));
                self.pending_bytes += len;
                self.dirty.insert(file);
                let _ = reports.send(Report::Written { len });
                if self.pending_bytes >= SYNC_BYTES || self.last_sync.elapsed() >= SYNC_INTERVAL {
                    self.sync()?;
                }
                self.maybe_finish(file, reports)
            }
            Work::FileEnd { file, sha } => {
                if let Some(f) = self.files.get_mut(file as usize).and_then(Option::as_mut) {
                    f.end = Some(sha);
                }
                self.maybe_finish(file, reports)
            }
        }
    }

    fn part(&mut self, file: u32) -> Result<&std::fs::File> {
        let Some(f) = self.files.get_mut(file as usize).and_then(Option::as_mut) else {
            return Err(Error::protocol("chunk for an unknown file"));
        };
        if f.part.is_none() {
            let dir = self.dest.dir(&f.dir, true)?;
            let part_name = part_name(&f.name);
            let part = match DestDir::open_part(&dir, &part_name)? {
                Some(p) => p,
                None => {
                    let p = DestDir::create_part(&dir, &part_name)?;
                    DestDir::preallocate(&p, f.size, &part_name)?;
                    p
                }
            };
            f.part = Some(part);
        }
        f.part
            .as_ref()
            .ok_or_else(|| Error::protocol("part file missing"))
    }

    /// fdatasync every dirty part file, then commit their new chunk rows.
    /// Starts making the written chunks durable (fdatasync, then commit) in the background.
    fn sync(&mut self) -> Result<()> {
        let mut files = Vec::with_capacity(self.dirty.len());
        for file in self.dirty.drain() {
            if let Some(Some(WFile { part: Some(p), .. })) = self.files.get(file as usize) {
                files.push(
                    p.try_clone()
                        .map_err(|e| Error::io("syncing received data", e))?,
                );
            }
        }
        let rows = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.last_sync = Instant::now();
        self.syncer.submit(Batch { files, rows })
    }

    /// Makes everything written so far durable before returning.
    fn sync_now(&mut self) -> Result<()> {
        self.sync()?;
        self.syncer.wait()
    }

    /// Hashes, from disk, the held chunks that follow the hash cursor, re-checking each
    /// against its digest from arrival. A chunk that no longer matches is dropped from the
    /// checkpoint and asked for again.
    fn advance_hash(&mut self, file: u32, reports: &mpsc::UnboundedSender<Report>) -> Result<()> {
        let cs = u64::from(self.chunk_size);
        let Writer {
            files,
            scratch,
            store,
            id,
            pending,
            syncer,
            ..
        } = self;
        let Some(f) = files.get_mut(file as usize).and_then(Option::as_mut) else {
            return Ok(());
        };
        while f.hashed < f.chunks && f.have[f.hashed as usize] {
            let Some(part) = f.part.as_ref() else { break };
            let idx = f.hashed;
            let len = chunk_len(f.size, cs as u32, idx).unwrap_or(0) as usize;
            let buf = &mut scratch[..len];
            part.read_exact_at(buf, idx * cs)
                .map_err(|e| Error::io("reading back a part file", e))?;
            if Sha256::digest(&*buf).as_slice() != f.digests[idx as usize] {
                tracing::warn!(
                    "chunk {idx} of {} changed on disk; fetching it again",
                    f.name
                );
                f.have[idx as usize] = false;
                f.have_count -= 1;
                f.digests[idx as usize] = [0; 32];
                pending.retain(|(pf, pi, _)| !(*pf == file && *pi == idx));
                syncer.wait()?; // a batch in flight may hold this row: let it land first
                store.drop_chunks(id, file, &[idx])?;
                let _ = reports.send(Report::Bad {
                    file,
                    index: idx,
                    len: len as u64,
                });
                break;
            }
            f.hasher.update(&*buf);
            f.hashed += 1;
        }
        Ok(())
    }

    fn maybe_finish(&mut self, file: u32, reports: &mpsc::UnboundedSender<Report>) -> Result<()> {
        let ready = matches!(self.files.get(file as usize), Some(Some(f)) if !f.done && f.end.is_some() && f.have_count == f.chunks);
        if !ready {
            return Ok(());
        }
        self.sync_now()?;
        if self
            .files
            .get(file as usize)
            .and_then(Option::as_ref)
            .is_some_and(|f| f.part.is_none())
        {
            self.part(file)?; // empty file: create it now
        }
        self.advance_hash(file, reports)?;
        let Some(f) = self.files.get_mut(file as usize).and_then(Option::as_mut) else {
            return Ok(());
        };
        if f.hashed < f.chunks {
            return Ok(()); // a chunk on disk no longer matched; it is being fetched again
        }
        let rel = if f.dir.is_empty() {
            f.name.clone()
        } else {
            format!("{}/{}", f.dir.join("/"), f.name)
        };
        let mut root = Sha256::new();
        for d in &f.digests {
            root.update(d);
        }
        let root: [u8; 32] = root.finalize().into();
        if Some(root) != f.end {
            // The chunks we verified are not the sender's list: fetch the whole file again.
            f.have.iter_mut().for_each(|b| *b = false);
            f.digests.iter_mut().for_each(|d| *d = [0; 32]);
            f.have_count = 0;
            f.hashed = 0;
            f.hasher = Sha256::new();
            self.store.clear_chunks(&self.id, file)?;
            return Err(Error::Verification { path: rel });
        }
        let digest: [u8; 32] = std::mem::take(&mut f.hasher).finalize().into();
        let Some(part) = f.part.take() else {
            return Ok(());
        };
        finish_metadata(&part, f.mode, f.mtime);
        part.sync_all()
            .map_err(|e| Error::io("syncing a finished file", e))?;
        drop(part);
        let dir = self.dest.dir(&f.dir, true)?;
        let part_name = part_name(&f.name);
        let base = f.name.clone();
        let mut name = base.clone();
        let mut n = 0;
        while !DestDir::rename_noreplace(&dir, &part_name, &name)? {
            n += 1;
            name = numbered(&base, n);
        }
        DestDir::fsync_dir(&dir)?;
        f.done = true;
        f.name = name.clone();
        let sha256 = hex::encode(digest);
        self.store
            .file_done(&self.id, file, Some(&sha256), Some(&name))?;
        let path = if f.dir.is_empty() {
            name
        } else {
            format!("{}/{}", f.dir.join("/"), name)
        };
        let _ = reports.send(Report::FileDone { file, path, sha256 });
        Ok(())
    }
}

fn clone_err(e: &Error) -> Error {
    match e {
        Error::DiskFull { path } => Error::DiskFull { path: path.clone() },
        Error::Verification { path } => Error::Verification { path: path.clone() },
        other => Error::Io {
            context: other.to_string(),
            source: std::io::Error::other(other.code()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Direction, TransferRow};

    fn setup(t: &std::path::Path, data: &[u8]) -> (Store, DestDir, Manifest) {
        let (store, _) = Store::open(&t.join("data")).unwrap();
        let dest = DestDir::open(&t.join("dest")).unwrap();
        let m = Manifest {
            chunk_size: CHUNK_SIZE,
            entries: vec![Entry::File {
                path: "a.bin".into(),
                size: data.len() as u64,
                mode: 0o644,
                mtime: 0,
            }],
        };
        store
            .insert_transfer(&TransferRow {
                id: "t".into(),
                direction: Direction::Receive,
                state: "interrupted".into(),
                peer_addr: String::new(),
                signal_url: None,
                resume_secret: Some([1; 32]),
                manifest: String::from_utf8(m.encode()).unwrap(),
                dest_dir: Some(t.join("dest").display().to_string()),
                peer_name: String::new(),
                total_bytes: data.len() as u64,
                path_kind: None,
                error_kind: None,
                error: None,
                created: 0,
                updated: 0,
            })
            .unwrap();
        store
            .insert_recv_files("t", &[(0, String::new(), "a.bin".into())])
            .unwrap();
        let digests: Vec<(u32, u64, [u8; 32])> = data
            .chunks(CHUNK_SIZE as usize)
            .enumerate()
            .map(|(i, c)| (0, i as u64, Sha256::digest(c).into()))
            .collect();
        store.put_chunks("t", &digests).unwrap();
        (store, dest, m)
    }

    #[test]
    fn a_file_renamed_just_before_a_crash_counts_as_done() {
        let t = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..CHUNK_SIZE as usize + 10)
            .map(|i| (i % 251) as u8)
            .collect();
        let (store, dest, m) = setup(t.path(), &data);
        // The rename happened, its record did not.
        std::fs::write(t.path().join("dest/a.bin"), &data).unwrap();
        let h = load_holdings(&store, "t", &m, &dest).unwrap();
        assert!(h.have[0].complete);
        let row = &store.recv_files("t").unwrap()[0];
        assert!(row.done);
        assert_eq!(
            row.sha256.as_deref(),
            Some(hex::encode(Sha256::digest(&data)).as_str())
        );
    }

    #[test]
    fn another_file_under_the_final_name_is_not_taken_for_ours() {
        let t = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..CHUNK_SIZE as usize + 10)
            .map(|i| (i % 251) as u8)
            .collect();
        let (store, dest, m) = setup(t.path(), &data);
        let mut other = data.clone();
        other[5] ^= 1;
        std::fs::write(t.path().join("dest/a.bin"), &other).unwrap();
        let h = load_holdings(&store, "t", &m, &dest).unwrap();
        assert!(!h.have[0].complete);
        assert!(!store.recv_files("t").unwrap()[0].done);
        assert_eq!(
            std::fs::read(t.path().join("dest/a.bin")).unwrap(),
            other,
            "left untouched"
        );
    }
}
