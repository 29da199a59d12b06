//! The sending side of one session: offer, then stream the chunks the receiver lacks,
//! within the credit it granted, hashing as it reads.
//!
//! Owns: the sender's half of the peer protocol, the chunk-digest cache and the
//! source-identity checks ("source changed").
//! Must not: open any path other than the sources frozen at offer time, serve a range
//! outside the manifest, or send more than the receiver's credit.

use std::collections::{HashMap, VecDeque};
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use sha2::{Digest, Sha256};
use skiff_proto::frame::{ChunkHeader, Plain, CHUNK_HEADER_LEN, COUNTER_LEN};
use skiff_proto::manifest::{chunk_count, chunk_len, Entry, Manifest};
use skiff_proto::peer::{decode_bitmap, ReceiverMsg, SenderMsg};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, Events, Progress};
use crate::recv::spawn_reader;
use crate::session::{frame_buffer, Channel};
use crate::store::{SendFileRow, Store};
use crate::walk::SourceId;
use crate::{Error, Result};

/// How often the reader says it is alive while it sends nothing.
const PING_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// Waiting this long for credit means the receiver is gone.
const CREDIT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Most extra sends of one chunk the receiver may ask for.
const MAX_RESENDS: u32 = 4;

/// Everything a session needs to send.
pub struct SendCtx {
    pub store: Store,
    pub id: String,
    pub manifest: Manifest,
    /// Per entry: the source row (files only).
    pub sources: Vec<Option<SendFileRow>>,
    pub device_name: String,
    pub events: Events,
    pub cancel: CancellationToken,
    /// Node shutdown: disconnect without cancelling the transfer.
    pub shutdown: CancellationToken,
    /// Bytes per second, see [`crate::Config::max_rate`].
    pub max_rate: Option<u64>,
}

impl SendCtx {
    /// Why the token fired: the user cancelled, or the node is shutting down.
    fn stopped(&self) -> Error {
        if self.shutdown.is_cancelled() {
            Error::Interrupted
        } else {
            Error::Cancelled
        }
    }
}

/// A frame ready to seal, and how many credit bytes it costs.
struct Out {
    frame: Vec<u8>,
    cost: u64,
}

/// What to send of each file.
struct FilePlan {
    file: u32,
    /// `true` = the receiver already holds this chunk.
    held: Vec<bool>,
}

/// Serves one authenticated session until the receiver reports every file complete.
pub async fn serve(ch: Channel, ctx: &SendCtx) -> Result<()> {
    let Channel { mut tx, rx, .. } = ch;
    let (mut frames, reader) = spawn_reader(rx);
    let result = serve_inner(&mut tx, &mut frames, ctx).await;
    if let Err(e) = &result {
        let msg = match e {
            Error::Cancelled => Some(SenderMsg::Cancel),
            Error::ConnectionClosed
            | Error::Remote { .. }
            | Error::Declined
            | Error::Interrupted => None,
            // The receiver learns which file, never where it lives on this computer.
            Error::SourceChanged { path } => Some(SenderMsg::Error {
                kind: e.code().to_owned(),
                message: std::path::Path::new(path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            }),
            other => Some(SenderMsg::Error {
                kind: other.code().to_owned(),
                message: other.to_string(),
            }),
        };
        if let Some(m) = msg {
            let _ = tx.send_control(&m.encode()).await;
            tx.close().await;
            // Let the receiver read why before the socket goes: closing it with the
            // receiver's messages unread resets the connection, and ours is lost.
            let drain = async { while frames.recv().await.is_some() {} };
            let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
        }
    }
    tx.close().await;
    reader.abort();
    result
}

async fn next_msg(frames: &mut mpsc::Receiver<Result<Vec<u8>>>) -> Result<ReceiverMsg> {
    let frame = frames.recv().await.ok_or(Error::ConnectionClosed)??;
    match Plain::parse(&frame[COUNTER_LEN..]).map_err(|e| Error::protocol(e.to_string()))? {
        Plain::Control(body) => {
            ReceiverMsg::decode(body).map_err(|e| Error::protocol(e.to_string()))
        }
        Plain::Chunk { .. } => Err(Error::protocol("the receiver sent file data")),
    }
}

/// [`next_msg`], but a silent receiver that owes credit for `CREDIT_TIMEOUT` is gone.
async fn next_msg_within(
    frames: &mut mpsc::Receiver<Result<Vec<u8>>>,
    waiting: bool,
) -> Result<ReceiverMsg> {
    if !waiting {
        return next_msg(frames).await;
    }
    tokio::time::timeout(CREDIT_TIMEOUT, next_msg(frames))
        .await
        .map_err(|_| Error::Timeout {
            what: "waiting for the receiver",
        })?
}

async fn serve_inner(
    tx: &mut crate::session::SealedTx,
    frames: &mut mpsc::Receiver<Result<Vec<u8>>>,
    ctx: &SendCtx,
) -> Result<()> {
    let offer = SenderMsg::Offer {
        transfer: ctx.id.clone(),
        sender: ctx.device_name.clone(),
        manifest: ctx.manifest.clone(),
    };
    tx.send_control(&offer.encode()).await?;
    let have = tokio::select! {
        biased;
        () = ctx.cancel.cancelled() => return Err(ctx.stopped()),
        msg = next_msg(frames) => match msg? {
            ReceiverMsg::Accept { have } => have,
            ReceiverMsg::Decline => return Err(Error::Declined),
            ReceiverMsg::Error { kind, message } => return Err(crate::recv::remote_error(kind, message)),
            ReceiverMsg::Cancel => return Err(Error::Cancelled),
            other => return Err(Error::protocol(format!("expected an answer to the offer, got {other:?}"))),
        },
    };
    ctx.events.state(&ctx.id, "transferring");
    let plan = make_plan(&ctx.manifest, &have)?;
    let total = ctx.manifest.total_bytes().unwrap_or(0);
    let held_bytes: u64 = plan.held_bytes;
    let mut progress = Progress::new(&ctx.id, total, held_bytes);
    progress.flush(&ctx.events);

    let (out_tx, mut out_rx) = mpsc::channel::<Out>(4);
    let reader = {
        let (store, id, m, sources, cancel) = (
            ctx.store.clone(),
            ctx.id.clone(),
            ctx.manifest.clone(),
            ctx.sources.clone(),
            ctx.cancel.clone(),
        );
        tokio::task::spawn_blocking(move || {
            read_files(&store, &id, &m, &sources, plan.files, &out_tx, &cancel)
        })
    };
    let mut reader = Some(reader);
    let mut credit = 0u64;
    let mut pending: Option<Out> = None;
    let mut resends: VecDeque<Out> = VecDeque::new();
    let mut resend_count: HashMap<(u32, u64), u32> = HashMap::new();
    let mut pacer = crate::pace::Pacer::new(ctx.max_rate);
    let outcome: Result<()> = loop {
        // Over the limit: send nothing until the pacer allows it.
        let hold = pacer.hold();
        // Resent chunks go first, then the reader's next frame, each within credit.
        let next = if hold.is_some() {
            None
        } else if resends.front().is_some_and(|o| o.cost <= credit) {
            resends.pop_front()
        } else if resends.is_empty() && pending.as_ref().is_some_and(|o| o.cost <= credit) {
            pending.take()
        } else {
            None
        };
        if let Some(out) = next {
            credit -= out.cost;
            pacer.record(out.frame.len() as u64);
            tx.send_frame(out.frame).await?;
            progress.add(out.cost, &ctx.events);
            continue;
        }
        // Only a receiver that owes us credit is expected to speak.
        let waiting_for_credit = hold.is_none() && (pending.is_some() || !resends.is_empty());
        tokio::select! {
            biased;
            () = ctx.cancel.cancelled() => break Err(ctx.stopped()),
            () = tokio::time::sleep_until(hold.unwrap_or_else(tokio::time::Instant::now)), if hold.is_some() => {}
            msg = next_msg_within(frames, waiting_for_credit) => match msg? {
                ReceiverMsg::Credit { bytes } => credit = credit.saturating_add(bytes).min(1 << 30),
                ReceiverMsg::Retry { file, index } => {
                    let n = resend_count.entry((file, index)).or_insert(0);
                    *n += 1;
                    if *n > MAX_RESENDS {
                        break Err(Error::protocol("the receiver asked for one chunk too often"));
                    }
                    let (m, sources) = (ctx.manifest.clone(), ctx.sources.clone());
                    let out = tokio::task::spawn_blocking(move || read_one(&m, &sources, file, index))
                        .await
                        .map_err(|_| Error::protocol("read task failed"))??;
                    resends.push_back(out);
                }
                ReceiverMsg::FileOk { file, sha256 } => {
                    let Some(entry) = ctx.manifest.entries.get(file as usize) else {
                        break Err(Error::protocol(format!("the receiver confirmed unknown file {file}")));
                    };
                    if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                        break Err(Error::protocol("malformed file digest"));
                    }
                    let path = entry.path().to_owned();
                    let (store, id, sha) = (ctx.store.clone(), ctx.id.clone(), sha256.clone());
                    store.call(move |s| s.file_done(&id, file, Some(&sha), None)).await?;
                    ctx.events.emit(Event::FileDone { transfer: ctx.id.clone(), path, sha256 });
                }
                ReceiverMsg::Complete => break Ok(()),
                ReceiverMsg::Error { kind, message } => break Err(crate::recv::remote_error(kind, message)),
                ReceiverMsg::Cancel => break Err(Error::Cancelled),
                other => break Err(Error::protocol(format!("unexpected message {other:?}"))),
            },
            out = out_rx.recv(), if pending.is_none() && reader.is_some() => match out {
                Some(out) => pending = Some(out),
                None => {
                    // The reader finished: all files read, or it hit an error.
                    if let Some(handle) = reader.take() {
                        match handle.await {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => break Err(e),
                            Err(_) => break Err(Error::protocol("read task failed")),
                        }
                    }
                }
            },
        }
    };
    drop(out_rx);
    if let Some(handle) = reader {
        let _ = handle.await;
    }
    progress.flush(&ctx.events);
    outcome
}

struct Plan {
    files: Vec<FilePlan>,
    held_bytes: u64,
}

fn make_plan(m: &Manifest, have: &[skiff_proto::peer::Have]) -> Result<Plan> {
    let mut by_file: HashMap<u32, &skiff_proto::peer::Have> = HashMap::new();
    for h in have {
        if !matches!(m.entries.get(h.file as usize), Some(Entry::File { .. })) {
            return Err(Error::protocol(format!(
                "the receiver named an unknown file {}",
                h.file
            )));
        }
        by_file.insert(h.file, h);
    }
    let mut plan = Plan {
        files: Vec::new(),
        held_bytes: 0,
    };
    for (i, e) in m.entries.iter().enumerate() {
        let Entry::File { size, .. } = e else {
            continue;
        };
        let n = chunk_count(*size, m.chunk_size);
        let held = match by_file.get(&(i as u32)) {
            Some(h) if h.complete => {
                plan.held_bytes += size;
                continue;
            }
            Some(h) => {
                let bits =
                    decode_bitmap(&h.chunks, n).map_err(|e| Error::protocol(e.to_string()))?;
                (0..n)
                    .map(|k| bits[(k / 8) as usize] & (1 << (k % 8)) != 0)
                    .collect::<Vec<bool>>()
            }
            None => vec![false; n as usize],
        };
        for (k, h) in held.iter().enumerate() {
            if *h {
                plan.held_bytes += u64::from(chunk_len(*size, m.chunk_size, k as u64).unwrap_or(0));
            }
        }
        plan.files.push(FilePlan {
            file: i as u32,
            held,
        });
    }
    Ok(plan)
}

fn open_source(row: &SendFileRow) -> Result<std::fs::File> {
    let path = row.src_path.display().to_string();
    let file = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&row.src_path)
        .map_err(|e| {
            // Gone, or replaced by a symlink (O_NOFOLLOW): not the file that was offered.
            if e.kind() == std::io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) {
                Error::SourceChanged { path: path.clone() }
            } else {
                Error::io(format!("opening {path}"), e)
            }
        })?;
    check_identity(&file, row)?;
    Ok(file)
}

fn check_identity(file: &std::fs::File, row: &SendFileRow) -> Result<()> {
    let meta = file
        .metadata()
        .map_err(|e| Error::io("checking a source file", e))?;
    if SourceId::of(&meta) != row.id {
        return Err(Error::SourceChanged {
            path: row.src_path.display().to_string(),
        });
    }
    Ok(())
}

/// A zeroed chunk frame of `len` data bytes; the header is filled in after hashing.
fn chunk_frame(len: usize) -> Vec<u8> {
    let mut frame = frame_buffer(1 + CHUNK_HEADER_LEN + len);
    frame.resize(COUNTER_LEN + 1 + CHUNK_HEADER_LEN + len, 0);
    frame
}

fn fill_header(frame: &mut [u8], file: u32, index: u64, sha256: [u8; 32]) {
    let mut head = Vec::with_capacity(1 + CHUNK_HEADER_LEN);
    ChunkHeader {
        file,
        index,
        sha256,
    }
    .write_prefix(&mut head);
    frame[COUNTER_LEN..COUNTER_LEN + head.len()].copy_from_slice(&head);
}

/// The reader (blocking): reads every planned file in order, hashes each chunk as it is
/// read, sends the chunks the receiver lacks, then the file digest.
fn read_files(
    store: &Store,
    id: &str,
    m: &Manifest,
    sources: &[Option<SendFileRow>],
    plan: Vec<FilePlan>,
    out: &mpsc::Sender<Out>,
    cancel: &CancellationToken,
) -> Result<()> {
    let cs = u64::from(m.chunk_size);
    let data_at = COUNTER_LEN + 1 + CHUNK_HEADER_LEN;
    let mut scratch = vec![0u8; m.chunk_size as usize];
    let mut last_ping = std::time::Instant::now();
    for fp in plan {
        let Some(Some(row)) = sources.get(fp.file as usize) else {
            return Err(Error::protocol("no source for a planned file"));
        };
        let size = m
            .entries
            .get(fp.file as usize)
            .map(Entry::size)
            .unwrap_or(0);
        let file = open_source(row)?;
        let cached: HashMap<u64, [u8; 32]> = store.chunks(id, fp.file)?.into_iter().collect();
        let mut fresh = Vec::new();
        let n = fp.held.len() as u64;
        let mut root = Sha256::new();
        for (index, held) in fp.held.iter().enumerate() {
            if cancel.is_cancelled() {
                return Ok(());
            }
            let index = index as u64;
            let cached_digest = cached.get(&index).copied();
            // A held chunk is not read again unless its digest was never cached, or it is
            // the first or last chunk (a cheap check that the source is unchanged).
            if *held && index != 0 && index + 1 != n {
                if let Some(d) = cached_digest {
                    root.update(d);
                    continue;
                }
            }
            if *held && last_ping.elapsed() >= PING_EVERY {
                // Reading what the receiver holds sends nothing: tell it we are alive.
                last_ping = std::time::Instant::now();
                if out.blocking_send(control_out(&SenderMsg::Ping)).is_err() {
                    return Ok(());
                }
            }
            let len = chunk_len(size, m.chunk_size, index).unwrap_or(0) as usize;
            let mut frame = if *held { Vec::new() } else { chunk_frame(len) };
            let data: &mut [u8] = if *held {
                &mut scratch[..len]
            } else {
                &mut frame[data_at..]
            };
            file.read_exact_at(data, index * cs).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    Error::SourceChanged {
                        path: row.src_path.display().to_string(),
                    }
                } else {
                    Error::io(format!("reading {}", row.src_path.display()), e)
                }
            })?;
            let digest: [u8; 32] = Sha256::digest(&*data).into();
            match cached_digest {
                Some(c) if c != digest => {
                    return Err(Error::SourceChanged {
                        path: row.src_path.display().to_string(),
                    })
                }
                Some(_) => {}
                None => fresh.push((fp.file, index, digest)),
            }
            root.update(digest);
            if fresh.len() >= 64 {
                store.put_chunks(id, &fresh)?;
                fresh.clear();
            }
            if !*held {
                fill_header(&mut frame, fp.file, index, digest);
                if out
                    .blocking_send(Out {
                        frame,
                        cost: len as u64,
                    })
                    .is_err()
                {
                    return Ok(()); // the session ended
                }
            }
        }
        store.put_chunks(id, &fresh)?;
        check_identity(&file, row)?;
        let end = SenderMsg::FileEnd {
            file: fp.file,
            sha256: hex::encode(root.finalize()),
        };
        if out.blocking_send(control_out(&end)).is_err() {
            return Ok(());
        }
    }
    Ok(())
}

/// A control message queued behind the chunks before it.
fn control_out(msg: &SenderMsg) -> Out {
    let body = msg.encode();
    let mut frame = frame_buffer(1 + body.len());
    frame.push(skiff_proto::frame::KIND_CONTROL);
    frame.extend_from_slice(&body);
    Out { frame, cost: 0 }
}

/// Reads one chunk again (after a bad-hash report).
fn read_one(m: &Manifest, sources: &[Option<SendFileRow>], file: u32, index: u64) -> Result<Out> {
    let Some(Some(row)) = sources.get(file as usize) else {
        return Err(Error::protocol(format!(
            "the receiver asked for unknown file {file}"
        )));
    };
    let size = m.entries.get(file as usize).map(Entry::size).unwrap_or(0);
    let len = chunk_len(size, m.chunk_size, index).ok_or_else(|| {
        Error::protocol(format!("the receiver asked for chunk {index} past the end"))
    })? as usize;
    let f = open_source(row)?;
    let mut frame = chunk_frame(len);
    let data_at = COUNTER_LEN + 1 + CHUNK_HEADER_LEN;
    f.read_exact_at(&mut frame[data_at..], index * u64::from(m.chunk_size))
        .map_err(|e| Error::io(format!("reading {}", row.src_path.display()), e))?;
    let digest: [u8; 32] = Sha256::digest(&frame[data_at..]).into();
    fill_header(&mut frame, file, index, digest);
    Ok(Out {
        frame,
        cost: len as u64,
    })
}
