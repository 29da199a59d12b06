//! The long-running work behind each `Node` command: the seeder (a sender that keeps
//! serving until the receiver has everything), the receiver with its reconnect loop, and
//! resume of either from the checkpoint.
//!
//! Owns: transfer states in the store (waiting → transferring ⇄ interrupted → completed |
//! failed | cancelled | declined) and the one-PAKE-attempt-per-code rule.
//! Must not: run blocking work outside `spawn_blocking`, or outlive its cancellation token.

use std::time::{Duration, Instant};

use skiff_proto::code::ShareCode;
use skiff_proto::frame::{Plain, COUNTER_LEN};
use skiff_proto::handshake::{hex_field, DialHello};
use skiff_proto::manifest::{Entry, Manifest};
use skiff_proto::peer::{ReceiverMsg, SenderMsg};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::TransferLock;
use crate::events::{Event, OfferEntry};
use crate::fsx::DestDir;
use crate::lan;
use crate::node::{
    Command, Ctx, Decision, IncomingOffer, Outcome, ReceiveOptions, SendOptions, SendStarted,
    TransferInfo,
};
use crate::pairing::{self, SignalLink};
use crate::paths;
use crate::recv::{self, Holdings, RecvCtx};
use crate::send::{self, SendCtx};
use crate::session::{self, Channel};
use crate::store::{Direction, Store, TransferRow};
use crate::transport::{tcp, Conn};
use crate::walk;
use crate::{Error, Result};

/// Waiting for the sender's offer after the handshake.
const OFFER_TIMEOUT: Duration = Duration::from_secs(30);

/// States a transfer can be resumed from ("waiting" senders never met a receiver: their
/// code is gone with the process, so they cannot).
pub(crate) fn is_resumable_state(state: &str) -> bool {
    matches!(state, "transferring" | "interrupted" | "paused")
}

async fn blocking<R: Send + 'static>(f: impl FnOnce() -> Result<R> + Send + 'static) -> Result<R> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Error::protocol("blocking task failed"))?
}

async fn set_state(store: &Store, ctx: &Ctx, id: &str, state: &'static str, err: Option<&Error>) {
    let (id2, kind, msg) = (
        id.to_owned(),
        err.map(|e| e.code().to_owned()),
        err.map(|e| e.to_string()),
    );
    let _ = store
        .call(move |s| s.set_state(&id2, state, kind.as_deref().zip(msg.as_deref())))
        .await;
    ctx.events.state(id, state);
}

fn new_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

// ---------------------------------------------------------------- sender

/// A peer-list send's target: a device name or id (prefix) in a presence space.
#[derive(Debug, Clone)]
pub(crate) struct SendTo {
    pub peer: String,
    pub space: Option<String>,
}

fn space_name(space: &Option<String>) -> Result<Option<skiff_proto::signal::SpaceName>> {
    space
        .clone()
        .map(skiff_proto::signal::SpaceName::try_from)
        .transpose()
        .map_err(|reason| Error::InvalidInput { reason })
}

/// The one device in `peers` that `target` names (its id, an id prefix of 8+ characters,
/// or its name, case-insensitively).
fn pick_peer(
    peers: &[skiff_proto::signal::PeerInfo],
    target: &str,
) -> Result<skiff_proto::signal::PeerInfo> {
    let t = target.trim();
    let by_id: Vec<_> = peers
        .iter()
        .filter(|p| {
            let id = p.device_id.as_str();
            id == t || (t.len() >= 8 && id.starts_with(t))
        })
        .collect();
    let found = if by_id.is_empty() {
        peers
            .iter()
            .filter(|p| p.name.eq_ignore_ascii_case(t))
            .collect()
    } else {
        by_id
    };
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(Error::InvalidInput {
            reason: format!(
                "no device {:?} is online in this space (see `skiff peers`)",
                crate::names::display_escape(t)
            ),
        }),
        _ => Err(Error::InvalidInput {
            reason: format!(
                "several devices are called {:?}: use the device id",
                crate::names::display_escape(t)
            ),
        }),
    }
}

pub(crate) async fn send(
    ctx: Ctx,
    paths: Vec<std::path::PathBuf>,
    opts: SendOptions,
    to: Option<SendTo>,
    cancel: CancellationToken,
    reply: oneshot::Sender<Result<SendStarted>>,
) {
    let id = new_id();
    let prepared = async {
        let offer = blocking(move || walk::build(&paths)).await?;
        let listener = tcp::listen(&opts.listen).await?;
        let listen = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or(opts.listen.clone());
        let lock = TransferLock::acquire(&ctx.config.data_dir, &id)?;
        let row = TransferRow {
            id: id.clone(),
            direction: Direction::Send,
            state: "waiting".into(),
            peer_addr: listen.clone(),
            signal_url: ctx.signal.clone(),
            resume_secret: None,
            manifest: String::from_utf8_lossy(&offer.manifest.encode()).into_owned(),
            dest_dir: None,
            peer_name: String::new(),
            total_bytes: offer.manifest.total_bytes().unwrap_or(0),
            path_kind: None,
            error_kind: None,
            error: None,
            created: 0,
            updated: 0,
        };
        let files: Vec<(u32, walk::Source)> = offer
            .sources
            .iter()
            .enumerate()
            .filter_map(|(i, s)| s.clone().map(|s| (i as u32, s)))
            .collect();
        ctx.store
            .call(move |s| {
                s.insert_transfer(&row)?;
                s.insert_send_files(&row.id, &files)
            })
            .await?;
        // With a signaling server, the server hands out the nameplate; otherwise any
        // random number does (it only has to match on both ends). A peer-list send has
        // no code: the device handshake replaces it.
        let (code, link) = match (&ctx.signal, to) {
            (None, Some(_)) => {
                return Err(Error::InvalidInput {
                    reason: "sending to a device needs a signaling server".into(),
                })
            }
            (Some(url), Some(to)) => {
                let data_dir = ctx.config.data_dir.clone();
                let key =
                    blocking(move || crate::device::DeviceKey::load_or_create(&data_dir)).await?;
                // Not under the device key's id: the server would replace this device's own
                // `listen` connection with it. The Noise handshake proves the key anyway.
                let transient = format!(
                    "{}{}",
                    crate::node::TRANSIENT_ID_PREFIX,
                    hex::encode(rand::random::<[u8; 12]>())
                );
                let mut link = SignalLink::connect_as(
                    url,
                    &transient,
                    &ctx.config.device_name,
                    space_name(&to.space)?,
                )
                .await?;
                let target = match link.peers().await.and_then(|p| pick_peer(&p, &to.peer)) {
                    Ok(t) => t,
                    Err(e) => {
                        link.shutdown().await;
                        return Err(e);
                    }
                };
                let meet = Meet::Device {
                    peer: target.peer_id,
                    key,
                };
                (None, Some((link, meet)))
            }
            (Some(url), None) => {
                let link = SignalLink::connect(url, &ctx.config.device_name, None).await?;
                match pairing::allocate_code(&link).await {
                    Ok((code, nameplate)) => (
                        Some(code.clone()),
                        Some((
                            link,
                            Meet::Code {
                                nameplate,
                                code,
                                announce: opts.announce_server,
                            },
                        )),
                    ),
                    Err(e) => {
                        link.shutdown().await;
                        return Err(e);
                    }
                }
            }
            (None, None) => {
                let mut rng = rand::thread_rng();
                let code = ShareCode::generate(&ShareCode::random_nameplate(&mut rng), &mut rng)
                    .map_err(|e| Error::BadCode {
                        reason: e.to_string(),
                    })?;
                (Some(code), None)
            }
        };
        Ok::<_, Error>((offer, listener, listen, lock, code, link))
    }
    .await;
    let (offer, listener, listen, lock, code, link) = match prepared {
        Ok(p) => p,
        Err(e) => {
            let _ = reply.send(Err(e));
            return;
        }
    };
    let _ = ctx
        .internal
        .send(Command::Started {
            id: id.clone(),
            running: crate::node::Running::of(&ctx, cancel.clone()),
        })
        .await;
    if let Some(code) = &code {
        ctx.events.emit(Event::Code {
            transfer: id.clone(),
            code: code.to_string(),
            link: code.link(),
            listen: listen.clone(),
        });
    }
    let _ = reply.send(Ok(SendStarted {
        id: id.clone(),
        code: code.as_ref().map(ToString::to_string).unwrap_or_default(),
        listen,
        skipped: offer.skipped,
    }));
    let outcome = match link {
        None => {
            // Announced on the LAN until the code's one attempt (dropped with it in `seed`).
            let code = code.map(|c| lan::announce_code(c, &listener, &ctx.config.device_name));
            seed(&ctx, &id, listener, None, code, &cancel).await
        }
        Some((link, meet)) => seed_paired(&ctx, &id, listener, link, meet, &cancel).await,
    };
    drop(lock);
    ctx.finished(&id, outcome).await;
}

/// How a sender meets its receiver on the signaling server.
enum Meet {
    /// A share code: its nameplate, and the PAKE over the relay. With `announce` (where
    /// the server listens for the LAN), the nameplate is announced on the LAN until the
    /// code's one attempt.
    Code {
        nameplate: skiff_proto::signal::Nameplate,
        code: ShareCode,
        announce: Option<std::net::SocketAddr>,
    },
    /// Peer-list send to the device behind `peer`: the Noise handshake of device keys.
    Device {
        peer: skiff_proto::signal::PeerId,
        key: crate::device::DeviceKey,
    },
}

/// A sender paired through the signaling server: the code's PAKE (or the device
/// handshake) runs over the relay and stores the resume secret; the sender then waits at
/// the transfer's rendezvous (for the WebRTC or TURN paths) while its listener takes
/// direct TCP connections.
async fn seed_paired(
    ctx: &Ctx,
    id: &str,
    listener: TcpListener,
    mut link: SignalLink,
    meet: Meet,
    cancel: &CancellationToken,
) -> Outcome {
    let addrs = tcp_paths(ctx, &listener);
    let (met_tx, met_rx) = oneshot::channel();
    let pair = async {
        // The secret is stored, and the sender is at the rendezvous, before the receiver
        // learns where to connect.
        let keep = |secret: crate::crypto::Secret, peer: Option<(String, String)>| {
            let (id2, url, name) = (id.to_owned(), link_url(ctx), ctx.config.device_name.clone());
            async move {
                ctx.store
                    .call(move |s| {
                        s.set_session(&id2, &secret, "direct")?;
                        match peer {
                            Some((peer_name, _)) => s.set_peer_name(&id2, &peer_name),
                            None => Ok(()),
                        }
                    })
                    .await?;
                let rv = pairing::open_rendezvous(&url, &name, &secret).await?;
                let _ = met_tx.send((rv, secret));
                Ok(())
            }
        };
        let r = match meet {
            Meet::Code {
                nameplate,
                code,
                announce,
            } => {
                let _advert = announce.and_then(|server| {
                    lan::announce_on_server(code.nameplate(), server, &ctx.config.device_name)
                });
                pairing::sender_pair(
                    &mut link,
                    &nameplate,
                    &code,
                    addrs.clone(),
                    |secret| keep(secret, None),
                    cancel,
                )
                .await
            }
            Meet::Device { peer, key } => {
                let name = ctx.config.device_name.clone();
                pairing::device_offer(&mut link, &peer, &key, &name, addrs.clone(), |session| {
                    let pinned = ctx.store.clone();
                    let device = session.peer.clone();
                    async move {
                        let d2 = device.clone();
                        let trusted = pinned
                            .call(move |s| crate::device::check_pinned(&s.trusted()?, &d2))
                            .await?;
                        ctx.events.emit(Event::Verify {
                            transfer: id.to_owned(),
                            peer: device.name.clone(),
                            device: device.id.clone(),
                            phrase: device.phrase.clone(),
                            trusted,
                        });
                        keep(session.secret, Some((device.name, device.id))).await
                    }
                })
                .await
            }
        };
        link.shutdown().await;
        r
    };
    let (conn_tx, conn_rx) = mpsc::channel(4);
    let rendezvous = async {
        match met_rx.await {
            Ok((rv, secret)) => {
                rendezvous_loop(ctx, Some(rv), secret, addrs.clone(), conn_tx, cancel).await
            }
            Err(_) => std::future::pending().await,
        }
    };
    let serving = seed(ctx, id, listener, Some(conn_rx), None, cancel);
    tokio::pin!(pair, serving, rendezvous);
    let mut paired = false;
    let first_session = tokio::time::sleep(NEVER);
    tokio::pin!(first_session);
    loop {
        tokio::select! {
            outcome = &mut serving => return outcome,
            r = &mut pair, if !paired => match r {
                Ok(()) => {
                    paired = true;
                    first_session
                        .as_mut()
                        .reset(tokio::time::Instant::now() + FIRST_SESSION_TIMEOUT);
                }
                Err(e) => return fail(ctx, id, e).await,
            },
            () = &mut first_session, if paired => {
                // The receiver took the code but no data connection ever authenticated:
                // its paths were tampered with on the way, or it gave up.
                let id2 = id.to_owned();
                let state = ctx.store.call(move |s| Ok(s.transfer(&id2)?.map(|t| t.state))).await;
                if matches!(state.as_ref().map(|s| s.as_deref()), Ok(Some("waiting"))) {
                    let e = Error::PeerVerification {
                        reason: "the receiver took the code but never connected: the connection \
                                 was tampered with, or the receiver gave up".into(),
                    };
                    return fail(ctx, id, e).await;
                }
                first_session.as_mut().reset(tokio::time::Instant::now() + NEVER);
            }
            () = &mut rendezvous => {}
        }
    }
}

/// A timer that does not fire (one year).
const NEVER: Duration = Duration::from_secs(365 * 24 * 3600);
/// After pairing, how long a sender waits for the receiver's first data connection.
const FIRST_SESSION_TIMEOUT: Duration = Duration::from_secs(45);

fn link_url(ctx: &Ctx) -> String {
    ctx.signal.clone().unwrap_or_default()
}

/// The direct TCP addresses a sender offers (none when `tcp_paths` is off).
fn tcp_paths(ctx: &Ctx, listener: &TcpListener) -> Vec<String> {
    if !ctx.config.tcp_paths {
        return Vec::new();
    }
    listener
        .local_addr()
        .map(|a| pairing::local_addrs(&a))
        .unwrap_or_default()
}

/// Keeps the sender at its rendezvous on `ctx.signal` until `cancel`, reopening it after
/// the server goes away for good (a restarted server, a network change). Data connections
/// negotiated there go to `conns`. `first` is an already open rendezvous link.
async fn rendezvous_loop(
    ctx: &Ctx,
    mut first: Option<SignalLink>,
    secret: crate::crypto::Secret,
    addrs: Vec<String>,
    conns: mpsc::Sender<Conn>,
    cancel: &CancellationToken,
) {
    let url = link_url(ctx);
    let mut delay = Duration::from_millis(500);
    while !cancel.is_cancelled() {
        let link = match first.take() {
            Some(l) => Ok(l),
            None => pairing::open_rendezvous(&url, &ctx.config.device_name, &secret).await,
        };
        match link {
            Ok(link) => {
                delay = Duration::from_millis(500);
                let r = pairing::serve_rendezvous(
                    link,
                    secret,
                    addrs.clone(),
                    ctx.config.rtc.clone(),
                    conns.clone(),
                    cancel.clone(),
                )
                .await;
                if let Err(e) = r {
                    tracing::info!("rendezvous ended: {e}");
                }
            }
            Err(e) => tracing::info!("cannot open the rendezvous: {e}"),
        }
        tokio::select! {
            () = cancel.cancelled() => {}
            () = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

async fn send_ctx(ctx: &Ctx, id: &str, cancel: &CancellationToken) -> Result<SendCtx> {
    let id2 = id.to_owned();
    let (row, files) = ctx
        .store
        .call(move |s| {
            Ok((
                s.transfer(&id2)?
                    .ok_or(Error::UnknownTransfer { id: id2.clone() })?,
                s.send_files(&id2)?,
            ))
        })
        .await?;
    let manifest =
        Manifest::decode(row.manifest.as_bytes()).map_err(|e| Error::protocol(e.to_string()))?;
    let mut sources = vec![None; manifest.entries.len()];
    for f in files {
        if let Some(slot) = sources.get_mut(f.idx as usize) {
            *slot = Some(f);
        }
    }
    Ok(SendCtx {
        store: ctx.store.clone(),
        id: id.to_owned(),
        manifest,
        sources,
        device_name: ctx.config.device_name.clone(),
        events: ctx.events.clone(),
        cancel: cancel.clone(),
        shutdown: ctx.shutdown.clone(),
        max_rate: ctx.config.max_rate,
    })
}

/// Where one data connection's handshake got to (see [`seed`]).
enum Shake {
    /// Its hello was read; the seeder decides what it may do.
    Hello(Conn, DialHello),
    /// Authenticated: serve it (with the fresh resume secret after a code's PAKE).
    Ready(Box<Channel>, Option<crate::crypto::Secret>),
    /// The code's one PAKE attempt failed: the transfer fails.
    CodeFailed,
    /// Refused or broken: nothing to do.
    Dropped,
}

async fn read_hello(mut conn: Conn) -> Shake {
    match session::read_hello(&mut conn).await {
        Ok(h) => Shake::Hello(conn, h),
        Err(e) => {
            tracing::info!("ignoring a connection from {}: {e}", conn.remote);
            Shake::Dropped
        }
    }
}

/// Serves connections until the transfer completes, fails for good, or is cancelled.
/// `code` is the unused share code; after one PAKE attempt it is gone.
async fn seed(
    ctx: &Ctx,
    id: &str,
    listener: TcpListener,
    mut incoming: Option<mpsc::Receiver<Conn>>,
    mut code: Option<lan::UnusedCode>,
    cancel: &CancellationToken,
) -> Outcome {
    let sctx = match send_ctx(ctx, id, cancel).await {
        Ok(c) => c,
        Err(e) => return fail(ctx, id, e).await,
    };
    // Handshakes run side by side, so a slow or abandoned connection (say a WebRTC attempt
    // the receiver gave up on) holds up nobody; sessions are served one at a time.
    let mut shaking: JoinSet<Shake> = JoinSet::new();
    loop {
        let shake = tokio::select! {
            biased;
            () = cancel.cancelled() => return fail(ctx, id, Error::Cancelled).await,
            Some(done) = shaking.join_next(), if !shaking.is_empty() => match done {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("a handshake task failed: {e}");
                    continue;
                }
            },
            accepted = listener.accept() => {
                match accepted {
                    Ok((s, _)) => {
                        shaking.spawn(read_hello(tcp::wrap(s)));
                    }
                    Err(e) => {
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
                continue;
            }
            negotiated = async { match incoming.as_mut() { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                match negotiated {
                    Some(c) => {
                        shaking.spawn(read_hello(c));
                    }
                    None => incoming = None,
                }
                continue;
            }
        };
        let (ch, fresh_secret) = match shake {
            Shake::Hello(mut conn, DialHello::Pake { nameplate, msg, .. }) => {
                match code.take_if(|c| c.nameplate() == nameplate) {
                    // One PAKE attempt per code, whatever its result: it is gone now.
                    Some(c) => shaking.spawn(async move {
                        match session::accept_pake(conn, &c, &msg).await {
                            Ok((ch, secret)) => Shake::Ready(Box::new(ch), Some(secret)),
                            Err(e) => {
                                tracing::info!("the code's PAKE failed: {e}");
                                Shake::CodeFailed
                            }
                        }
                    }),
                    None => shaking.spawn(async move {
                        session::refuse(
                            &mut conn,
                            "unknown_transfer",
                            "no transfer is waiting for this code",
                        )
                        .await;
                        Shake::Dropped
                    }),
                };
                continue;
            }
            Shake::Hello(
                mut conn,
                DialHello::Resume {
                    rendezvous, nonce, ..
                },
            ) => {
                let id2 = id.to_owned();
                let row = match ctx.store.call(move |s| s.transfer(&id2)).await {
                    Ok(Some(r)) => r,
                    _ => return fail(ctx, id, Error::UnknownTransfer { id: id.to_owned() }).await,
                };
                let matches = row.resume_secret.filter(|s| {
                    hex_field::<32>(&rendezvous).is_ok_and(|r| crate::crypto::rendezvous(s) == r)
                });
                match matches {
                    Some(secret) => shaking.spawn(async move {
                        match session::accept_resume(conn, &secret, &nonce).await {
                            Ok(ch) => Shake::Ready(Box::new(ch), None),
                            Err(e) => {
                                tracing::info!("resume handshake failed: {e}");
                                Shake::Dropped
                            }
                        }
                    }),
                    None => shaking.spawn(async move {
                        session::refuse(&mut conn, "unknown_transfer", "no such transfer here")
                            .await;
                        Shake::Dropped
                    }),
                };
                continue;
            }
            Shake::Ready(ch, secret) => (*ch, secret),
            Shake::CodeFailed => return fail(ctx, id, Error::CodeMismatch).await,
            Shake::Dropped => continue,
        };
        let (id2, path) = (id.to_owned(), ch.path.as_str().to_owned());
        let recorded = ctx
            .store
            .call(move |s| {
                // A transfer still "waiting" has never had a session: this is its first.
                let before = s.transfer(&id2)?.map(|t| t.state).unwrap_or_default();
                match fresh_secret {
                    Some(secret) => s.set_session(&id2, &secret, &path)?,
                    None => s.set_path_kind(&id2, &path)?,
                }
                Ok(before != "waiting")
            })
            .await;
        let resumed = match recorded {
            Ok(r) => r,
            Err(e) => return fail(ctx, id, e).await,
        };
        ctx.events.emit(Event::Connected {
            transfer: id.to_owned(),
            path: ch.path.as_str().to_owned(),
            remote: ch.remote.clone(),
            resumed,
        });
        let path = ch.path.as_str().to_owned();
        set_state(&ctx.store, ctx, id, "transferring", None).await;
        match send::serve(ch, &sctx).await {
            Ok(()) => {
                set_state(&ctx.store, ctx, id, "completed", None).await;
                let files = sctx
                    .manifest
                    .entries
                    .iter()
                    .filter(|e| matches!(e, Entry::File { .. }))
                    .map(|e| crate::events::DoneFile {
                        path: e.path().to_owned(),
                        sha256: String::new(),
                    })
                    .collect::<Vec<_>>();
                let files = with_sender_digests(&ctx.store, id, files).await;
                ctx.events.emit(Event::Done {
                    transfer: id.to_owned(),
                    path: path.clone(),
                    files: files.clone(),
                });
                return Outcome::Done { path, files };
            }
            Err(e) if (e.is_resumable() || receiver_will_resume(&e)) && !cancel.is_cancelled() => {
                tracing::info!("session ended: {e}; waiting for the receiver to come back");
                ctx.events.error(Some(id), &e);
                set_state(&ctx.store, ctx, id, "interrupted", Some(&e)).await;
            }
            Err(e) => return fail(ctx, id, e).await,
        }
    }
}

/// The receiver reported a local, resumable failure (say, its disk is full): it resumes
/// once that is fixed, so the sender keeps serving instead of failing the transfer.
fn receiver_will_resume(e: &Error) -> bool {
    matches!(e, Error::Remote { kind, .. }
        if matches!(kind.as_str(), "disk_full" | "timeout" | "io" | "verification_failed"))
}

async fn with_sender_digests(
    store: &Store,
    id: &str,
    mut files: Vec<crate::events::DoneFile>,
) -> Vec<crate::events::DoneFile> {
    let id2 = id.to_owned();
    // The receiver reports each file's content digest in `FileOk`; they are in the file rows.
    if let Ok(rows) = store
        .call(move |s| {
            let conn = s.lock();
            let mut stmt =
                conn.prepare("SELECT sha256 FROM files WHERE transfer = ?1 ORDER BY idx")?;
            let v = stmt
                .query_map([&id2], |r| r.get::<_, Option<String>>(0))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            Ok(v)
        })
        .await
    {
        for (f, sha) in files.iter_mut().zip(rows) {
            f.sha256 = sha.unwrap_or_default();
        }
    }
    files
}

async fn fail(ctx: &Ctx, id: &str, e: Error) -> Outcome {
    let e = if matches!(e, Error::Cancelled) && ctx.shutdown.is_cancelled() {
        Error::Interrupted
    } else {
        e
    };
    let state = match e {
        Error::Interrupted if ctx.paused.is_cancelled() => "paused",
        Error::Cancelled => "cancelled",
        Error::Declined => "declined",
        _ if e.is_resumable() => "interrupted",
        _ => "failed",
    };
    set_state(&ctx.store, ctx, id, state, Some(&e)).await;
    ctx.events.error(Some(id), &e);
    Outcome::failed(&e)
}

// ---------------------------------------------------------------- receiver

async fn read_offer(ch: &mut Channel) -> Result<(String, String, Manifest)> {
    let frame = tokio::time::timeout(OFFER_TIMEOUT, ch.rx.recv())
        .await
        .map_err(|_| Error::Timeout {
            what: "waiting for the sender's offer",
        })??
        .ok_or(Error::ConnectionClosed)?;
    match Plain::parse(&frame[COUNTER_LEN..]).map_err(|e| Error::protocol(e.to_string()))? {
        Plain::Control(body) => match SenderMsg::decode(body).map_err(|e| Error::BadOffer {
            reason: e.to_string(),
        })? {
            SenderMsg::Offer {
                transfer,
                sender,
                manifest,
            } => Ok((transfer, sender, manifest)),
            SenderMsg::Error { kind, message } => Err(recv::remote_error(kind, message)),
            SenderMsg::Cancel => Err(Error::Cancelled),
            other => Err(Error::protocol(format!("expected an offer, got {other:?}"))),
        },
        Plain::Chunk { .. } => Err(Error::protocol("file data before the offer")),
    }
}

fn offer_entries(m: &Manifest, sanitised: &[Vec<String>]) -> Vec<OfferEntry> {
    m.entries
        .iter()
        .zip(sanitised)
        .map(|(e, comps)| OfferEntry {
            path: comps.join("/"),
            size: e.size(),
            dir: matches!(e, Entry::Dir { .. }),
        })
        .collect()
}

async fn tell_sender(ch: &mut Channel, e: &Error) {
    let m = ReceiverMsg::Error {
        kind: e.code().to_owned(),
        message: e.to_string(),
    };
    let _ = ch.tx.send_control(&m.encode()).await;
    ch.tx.close().await;
}

pub(crate) async fn receive(
    ctx: Ctx,
    code: String,
    opts: ReceiveOptions,
    cancel: CancellationToken,
    reply: oneshot::Sender<Result<IncomingOffer>>,
) {
    let mut ctx = ctx;
    let mut reply = Some(reply);
    let first = receive_first(&mut ctx, &code, &opts, &cancel, &mut reply).await;
    receive_rest(ctx, first, opts, cancel, reply).await;
}

/// A peer-list send that `listen` accepted the device of: connect, then as [`receive`].
pub(crate) async fn receive_device(
    ctx: Ctx,
    request: pairing::DeviceRequest,
    trusted: bool,
    opts: ReceiveOptions,
    cancel: CancellationToken,
) {
    let mut reply = None;
    let first = async {
        let url = link_url(&ctx);
        let ch = connect_paired(&ctx, &url, &request.secret, &request.tcp, true).await?;
        let peer = peer_addr_of(&ch, &request.tcp);
        let device = Some((request.device.clone(), trusted));
        receive_on(
            &ctx,
            ch,
            request.secret,
            peer,
            device,
            &opts,
            &cancel,
            &mut reply,
        )
        .await
    }
    .await;
    receive_rest(ctx, first, opts, cancel, None).await;
}

async fn receive_rest(
    ctx: Ctx,
    first: Result<(String, bool, Result<Vec<crate::events::DoneFile>>)>,
    opts: ReceiveOptions,
    cancel: CancellationToken,
    mut reply: Option<oneshot::Sender<Result<IncomingOffer>>>,
) {
    let (id, outcome) = match first {
        Ok((id, _, Ok(files))) => {
            let o = done(&ctx, &id, files).await;
            (id, o)
        }
        Ok((id, true, Err(e))) if e.is_resumable() && !cancel.is_cancelled() => {
            ctx.events.error(Some(&id), &e);
            set_state(&ctx.store, &ctx, &id, "interrupted", Some(&e)).await;
            let o = reconnect_loop(&ctx, &id, opts.reconnect_for, &cancel, Some(e)).await;
            (id, o)
        }
        Ok((id, _, Err(e))) => {
            let o = fail(&ctx, &id, e).await;
            (id, o)
        }
        Err(e) => {
            match reply.take() {
                Some(r) => {
                    let _ = r.send(Err(e));
                }
                None => ctx.events.error(None, &e),
            }
            return;
        }
    };
    ctx.finished(&id, outcome).await;
}

/// `listen`: keeps this device online in its space and turns every authenticated device
/// request into a receive (through the node, which owns those tasks).
pub(crate) async fn listen(
    ctx: Ctx,
    opts: crate::node::ListenOptions,
    cancel: CancellationToken,
    reply: oneshot::Sender<Result<()>>,
) {
    ctx.presence.send_replace(crate::node::PeerList {
        presence: crate::node::Presence::Connecting,
        ..Default::default()
    });
    let started = async {
        let url = ctx.signal.clone().ok_or_else(|| Error::InvalidInput {
            reason: "listening needs a signaling server".into(),
        })?;
        let data_dir = ctx.config.data_dir.clone();
        let key = blocking(move || crate::device::DeviceKey::load_or_create(&data_dir)).await?;
        let link = SignalLink::connect_as(
            &url,
            &key.id(),
            &ctx.config.device_name,
            space_name(&opts.space)?,
        )
        .await?;
        Ok::<_, Error>((key, link))
    }
    .await;
    let (key, link) = match started {
        Ok(x) => x,
        Err(e) => {
            ctx.presence.send_replace(crate::node::PeerList {
                detail: Some(e.to_string()),
                ..Default::default()
            });
            let _ = reply.send(Err(e));
            return;
        }
    };
    // The link's welcome was its `Connected`; the peer snapshot follows on its events.
    ctx.presence
        .send_modify(|p| p.presence = crate::node::Presence::Online);
    ctx.events.emit(Event::Listening {
        device: key.id(),
        name: ctx.config.device_name.clone(),
    });
    let _ = reply.send(Ok(()));
    let store = ctx.store.clone();
    let check: pairing::DeviceCheck = std::sync::Arc::new(move |d| {
        let store = store.clone();
        Box::pin(async move {
            store
                .call(move |s| crate::device::check_pinned(&s.trusted()?, &d))
                .await
        })
    });
    let (tx, mut rx) = mpsc::channel(4);
    let serving = pairing::serve_listen(
        link,
        key,
        ctx.config.device_name.clone(),
        check,
        tx,
        ctx.presence.clone(),
        cancel.clone(),
    );
    tokio::pin!(serving);
    loop {
        tokio::select! {
            r = &mut serving => {
                let detail = match r {
                    Err(e) => {
                        ctx.events.error(None, &e);
                        e.to_string()
                    }
                    Ok(()) => "stopped listening".to_owned(),
                };
                ctx.presence.send_replace(crate::node::PeerList {
                    detail: Some(detail),
                    ..Default::default()
                });
                return;
            }
            Some((request, trusted)) = rx.recv() => {
                let _ = ctx
                    .internal
                    .send(Command::Incoming { request, trusted, opts: opts.receive.clone() })
                    .await;
            }
        }
    }
}

/// Receiver, direct mode: dial the sender and run the code's PAKE on that connection.
async fn direct_channel(addr: &str, code: &ShareCode) -> Result<(Channel, crate::crypto::Secret)> {
    let conn = tokio::time::timeout(session::HANDSHAKE_TIMEOUT, tcp::dial(addr))
        .await
        .map_err(|_| Error::Timeout {
            what: "connecting to the sender",
        })??;
    session::dial_pake(conn, code).await
}

/// Receiver, signaling mode: the code's PAKE over the signaling relay gives the resume
/// secret and the sender's TCP addresses; the data channel is the first of a direct TCP
/// connection and whatever the rendezvous negotiates (WebRTC, TURN), authenticated with
/// the secret either way.
async fn paired_channel(
    ctx: &Ctx,
    url: &str,
    code: &ShareCode,
) -> Result<(Channel, crate::crypto::Secret, String)> {
    let mut link = SignalLink::connect(url, &ctx.config.device_name, None).await?;
    let paired = pairing::receiver_pair(&mut link, code).await;
    link.shutdown().await;
    let (secret, addrs, _code_channel) = paired?;
    let ch = connect_paired(ctx, url, &secret, &addrs, true).await?;
    let peer = peer_addr_of(&ch, &addrs);
    Ok((ch, secret, peer))
}

/// What a paired receiver stores as the sender's address: the direct TCP address that
/// answered, or "rendezvous" when the data came over WebRTC/TURN (resume meets there).
fn peer_addr_of(ch: &Channel, offered: &[String]) -> String {
    if ch.remote.starts_with("webrtc:") || offered.is_empty() {
        "rendezvous".to_owned()
    } else {
        ch.remote.clone()
    }
}

/// Receiver: a data channel to a paired sender, racing its direct TCP addresses (a LAN
/// answers in milliseconds) against the rendezvous negotiation (WebRTC, TURN).
async fn connect_paired(
    ctx: &Ctx,
    url: &str,
    secret: &crate::crypto::Secret,
    addrs: &[String],
    fresh: bool,
) -> Result<Channel> {
    let tcp = paths::dial_tcp(addrs, secret);
    // A fresh pairing races the addresses it was just given; a resume also tries the ones
    // the (maybe restarted) sender offers at the rendezvous.
    let rendezvous = pairing::dial_rendezvous(
        url,
        &ctx.config.device_name,
        secret,
        &ctx.config.rtc,
        fresh || !ctx.config.tcp_paths,
        pairing::RENDEZVOUS_WAIT,
    );
    tokio::pin!(tcp, rendezvous);
    let mut tcp_done = addrs.is_empty() || !ctx.config.tcp_paths;
    loop {
        tokio::select! {
            r = &mut tcp, if !tcp_done => match r {
                Ok(ch) => return Ok(ch),
                Err(e) => {
                    tracing::info!("direct TCP to the sender failed: {e}");
                    tcp_done = true;
                }
            },
            r = &mut rendezvous => return r,
        }
    }
}

/// The first session: code, offer, decision, layout. Errors before the transfer exists
/// are `Err`; later ones are returned with the id so they can be resumed or reported.
/// A code found on the LAN sets the transfer's server (`ctx.signal`): the one whose
/// nameplate it is, or none for a sender dialed directly.
async fn receive_first(
    ctx: &mut Ctx,
    code: &str,
    opts: &ReceiveOptions,
    cancel: &CancellationToken,
    reply: &mut Option<oneshot::Sender<Result<IncomingOffer>>>,
) -> Result<(String, bool, Result<Vec<crate::events::DoneFile>>)> {
    let code = ShareCode::parse(code).map_err(|e| Error::BadCode {
        reason: e.to_string(),
    })?;
    let on_lan = opts.connect.is_empty() && (ctx.signal.is_none() || opts.find_on_lan);
    if on_lan {
        match lan::dial_code(&code).await {
            Ok(lan::LanCode::Direct(ch, secret, addr)) => {
                ctx.signal = None;
                return receive_on(ctx, *ch, secret, addr, None, opts, cancel, reply).await;
            }
            Ok(lan::LanCode::Server(url)) => {
                tracing::info!("code {} is on the LAN server {url}", code.nameplate());
                ctx.signal = Some(url);
            }
            // Not on the LAN (or no mDNS here): the server in use, if there is one.
            Err(e @ (Error::NotOnLan { .. } | Error::Lan { .. }))
                if ctx.signal.is_some() && !lan::is_ambiguous(&e) =>
            {
                tracing::info!("{e}: trying the signaling server in use");
            }
            Err(e) => return Err(e),
        }
    }
    let (ch, secret, peer_addr) = match ctx.signal.clone() {
        Some(url) => paired_channel(ctx, &url, &code).await?,
        None => {
            let (ch, secret) = direct_channel(&opts.connect, &code).await?;
            (ch, secret, opts.connect.clone())
        }
    };
    receive_on(ctx, ch, secret, peer_addr, None, opts, cancel, reply).await
}

/// The first session once a channel to the sender exists (from a code or a device
/// request): offer, decision, layout, data.
#[allow(clippy::too_many_arguments)]
async fn receive_on(
    ctx: &Ctx,
    mut ch: Channel,
    secret: crate::crypto::Secret,
    peer_addr: String,
    device: Option<(crate::device::PeerDevice, bool)>,
    opts: &ReceiveOptions,
    cancel: &CancellationToken,
    reply: &mut Option<oneshot::Sender<Result<IncomingOffer>>>,
) -> Result<(String, bool, Result<Vec<crate::events::DoneFile>>)> {
    let (id, sender, manifest) = match read_offer(&mut ch).await {
        Ok(o) => o,
        Err(e) => {
            // An offer we cannot even decode (unknown entry kind, too many entries): say
            // why, as for one that fails its checks, instead of just hanging up.
            if matches!(e, Error::BadOffer { .. } | Error::Protocol { .. }) {
                tell_sender(&mut ch, &e).await;
            }
            return Err(e);
        }
    };
    let sanitised = match recv::check_offer(&id, &manifest) {
        Ok(s) => s,
        Err(e) => {
            tell_sender(&mut ch, &e).await;
            return Err(e);
        }
    };
    let entries = offer_entries(&manifest, &sanitised);
    let info = IncomingOffer {
        id: id.clone(),
        sender: sender.clone(),
        files: manifest.file_count(),
        dirs: manifest.entries.len() - manifest.file_count(),
        total: manifest.total_bytes().unwrap_or(0),
        entries: entries.clone(),
    };
    if let Some((d, trusted)) = &device {
        ctx.events.emit(Event::Verify {
            transfer: id.clone(),
            peer: d.name.clone(),
            device: d.id.clone(),
            phrase: d.phrase.clone(),
            trusted: *trusted,
        });
    }
    ctx.events.emit(Event::Offer {
        transfer: id.clone(),
        sender: sender.clone(),
        files: info.files,
        dirs: info.dirs,
        total: info.total,
        entries,
    });
    let (dtx, drx) = oneshot::channel();
    let _ = ctx
        .internal
        .send(Command::Offered {
            id: id.clone(),
            running: crate::node::Running::of(ctx, cancel.clone()),
            decision: dtx,
        })
        .await;
    if let Some(r) = reply.take() {
        let _ = r.send(Ok(info));
    }
    let decision = if opts.auto_accept {
        Decision::Accept {
            dir: opts.dir.clone(),
        }
    } else {
        tokio::select! {
            biased;
            () = cancel.cancelled() => Decision::Decline,
            d = drx => d.unwrap_or(Decision::Decline),
        }
    };
    let dir = match decision {
        Decision::Decline => {
            let _ = ch.tx.send_control(&ReceiverMsg::Decline.encode()).await;
            ch.tx.close().await;
            return Ok((id, false, Err(Error::Declined)));
        }
        Decision::Accept { dir } => dir
            .or(opts.dir.clone())
            .unwrap_or_else(|| ctx.config.download_dir.clone()),
    };
    // Lay out local names and record the transfer before saying yes.
    let setup = {
        let signal_url = ctx.signal.clone();
        let (store, id, manifest, dir, peer, path, data_dir) = (
            ctx.store.clone(),
            id.clone(),
            manifest.clone(),
            dir.clone(),
            peer_addr,
            ch.path.as_str().to_owned(),
            ctx.config.data_dir.clone(),
        );
        blocking(move || {
            let dest = DestDir::open(&dir)?;
            recv::check_space(&dest, manifest.total_bytes().unwrap_or(0))?;
            let layout = recv::plan(&manifest, &sanitised, &dest)?;
            let lock = TransferLock::acquire(&data_dir, &id)?;
            recv::create_dirs(&manifest, &layout, &dest)?;
            let row = TransferRow {
                id: id.clone(),
                direction: Direction::Receive,
                state: "transferring".into(),
                peer_addr: peer,
                signal_url,
                resume_secret: Some(secret),
                manifest: String::from_utf8_lossy(&manifest.encode()).into_owned(),
                dest_dir: Some(dest.path().to_string_lossy().into_owned()),
                peer_name: sender,
                total_bytes: manifest.total_bytes().unwrap_or(0),
                path_kind: Some(path),
                error_kind: None,
                error: None,
                created: 0,
                updated: 0,
            };
            store.insert_transfer(&row)?;
            let files: Vec<(u32, String, String)> = manifest
                .entries
                .iter()
                .zip(&layout)
                .enumerate()
                .filter(|(_, (e, _))| matches!(e, Entry::File { .. }))
                .map(|(i, (_, l))| (i as u32, l.dir.join("/"), l.name.clone()))
                .collect();
            store.insert_recv_files(&id, &files)?;
            Ok(lock)
        })
        .await
    };
    let lock = match setup {
        Ok(l) => l,
        Err(e) => {
            tell_sender(&mut ch, &e).await;
            return Ok((id, false, Err(e)));
        }
    };
    let bits = manifest
        .entries
        .iter()
        .map(|e| match e {
            Entry::File { size, .. } => Some(vec![
                false;
                skiff_proto::manifest::chunk_count(*size, manifest.chunk_size)
                    as usize
            ]),
            Entry::Dir { .. } => None,
        })
        .collect();
    let holdings = Holdings {
        have: Vec::new(),
        bits,
        held_bytes: 0,
        unallocated: 0,
    };
    let result = run_session(ctx, &id, ch, manifest, dir, holdings, false, cancel).await;
    drop(lock);
    Ok((id, true, result))
}

#[allow(clippy::too_many_arguments)]
async fn run_session(
    ctx: &Ctx,
    id: &str,
    mut ch: Channel,
    manifest: Manifest,
    dest: std::path::PathBuf,
    holdings: Holdings,
    resumed: bool,
    cancel: &CancellationToken,
) -> Result<Vec<crate::events::DoneFile>> {
    ch.tx
        .send_control(
            &ReceiverMsg::Accept {
                have: holdings.have.clone(),
            }
            .encode(),
        )
        .await?;
    ctx.events.emit(Event::Connected {
        transfer: id.to_owned(),
        path: ch.path.as_str().to_owned(),
        remote: ch.remote.clone(),
        resumed,
    });
    let (id2, path) = (id.to_owned(), ch.path.as_str().to_owned());
    ctx.store
        .call(move |s| s.set_path_kind(&id2, &path))
        .await?;
    set_state(&ctx.store, ctx, id, "transferring", None).await;
    let rctx = RecvCtx {
        store: ctx.store.clone(),
        id: id.to_owned(),
        manifest,
        dest,
        events: ctx.events.clone(),
        cancel: cancel.clone(),
        shutdown: ctx.shutdown.clone(),
        max_rate: ctx.config.max_rate,
    };
    recv::run(ch, rctx, holdings).await
}

async fn done(ctx: &Ctx, id: &str, files: Vec<crate::events::DoneFile>) -> Outcome {
    set_state(&ctx.store, ctx, id, "completed", None).await;
    let id2 = id.to_owned();
    let path = ctx
        .store
        .call(move |s| Ok(s.transfer(&id2)?.and_then(|t| t.path_kind)))
        .await
        .ok()
        .flatten()
        .unwrap_or_default();
    ctx.events.emit(Event::Done {
        transfer: id.to_owned(),
        path: path.clone(),
        files: files.clone(),
    });
    Outcome::Done { path, files }
}

/// One resumed session of a receiver: dial, authenticate with the stored secret, re-check
/// what is on disk, send `Accept { have }`, receive the rest.
async fn resume_once(
    ctx: &Ctx,
    row: &TransferRow,
    cancel: &CancellationToken,
) -> Result<Vec<crate::events::DoneFile>> {
    let secret = row.resume_secret.ok_or_else(|| Error::InvalidInput {
        reason: "this transfer never started".into(),
    })?;
    let mut ch = match &row.signal_url {
        // The sender may have moved (restart, new network): meet at the rendezvous, and
        // race the last known direct address in case the server is away.
        Some(url) => {
            let known: Vec<String> = row
                .peer_addr
                .parse::<std::net::SocketAddr>()
                .map(|a| vec![a.to_string()])
                .unwrap_or_default();
            connect_paired(ctx, url, &secret, &known, false).await?
        }
        None => {
            let conn = tokio::time::timeout(session::HANDSHAKE_TIMEOUT, tcp::dial(&row.peer_addr))
                .await
                .map_err(|_| Error::Timeout {
                    what: "connecting to the sender",
                })??;
            session::dial_resume(conn, &secret).await?
        }
    };
    let (tid, _sender, manifest) = read_offer(&mut ch).await?;
    let stored =
        Manifest::decode(row.manifest.as_bytes()).map_err(|e| Error::protocol(e.to_string()))?;
    if tid != row.id || manifest != stored {
        let e = Error::SourceChanged {
            path: "the sender's offer".into(),
        };
        tell_sender(&mut ch, &e).await;
        return Err(e);
    }
    let dest = std::path::PathBuf::from(row.dest_dir.clone().unwrap_or_default());
    let holdings = {
        let (store, id, m, dest) = (
            ctx.store.clone(),
            row.id.clone(),
            manifest.clone(),
            dest.clone(),
        );
        blocking(move || {
            let d = DestDir::open(&dest)?;
            let h = recv::load_holdings(&store, &id, &m, &d)?;
            recv::check_space(&d, h.unallocated)?;
            Ok(h)
        })
        .await
    };
    let holdings = match holdings {
        Ok(h) => h,
        Err(e) => {
            tell_sender(&mut ch, &e).await;
            return Err(e);
        }
    };
    run_session(ctx, &row.id, ch, manifest, dest, holdings, true, cancel).await
}

/// Keeps resuming a receiver until it completes, fails for good, or `window` passes
/// without a successful connection. `cause` is the error that interrupted the last
/// session: when the window closes, the outcome names it (why the transfer stopped),
/// not the refused reconnects that followed.
async fn reconnect_loop(
    ctx: &Ctx,
    id: &str,
    window: Duration,
    cancel: &CancellationToken,
    mut cause: Option<Error>,
) -> Outcome {
    let lock = match TransferLock::acquire(&ctx.config.data_dir, id) {
        Ok(l) => l,
        Err(e) => return Outcome::failed(&e),
    };
    let mut deadline = Instant::now() + window;
    let mut delay = Duration::from_millis(250);
    let mut last: Option<Error> = None;
    let outcome = loop {
        if cancel.is_cancelled() {
            break fail(ctx, id, Error::Cancelled).await;
        }
        let id2 = id.to_owned();
        let row = match ctx.store.call(move |s| s.transfer(&id2)).await {
            Ok(Some(r)) => r,
            Ok(None) => break Outcome::failed(&Error::UnknownTransfer { id: id.to_owned() }),
            Err(e) => break fail(ctx, id, e).await,
        };
        let attempt = tokio::select! {
            biased;
            () = cancel.cancelled() => Err(Error::Cancelled),
            r = resume_once(ctx, &row, cancel) => r,
        };
        match attempt {
            Ok(files) => break done(ctx, id, files).await,
            Err(e)
                if e.is_resumable()
                    || matches!(e, Error::Io { .. } | Error::UnknownTransfer { .. }) =>
            {
                if matches!(e, Error::DiskFull { .. } | Error::NoSpace { .. }) {
                    break fail(ctx, id, e).await;
                }
                tracing::info!("resume attempt failed: {e}");
                let had_session = !matches!(
                    e,
                    Error::Io { .. } | Error::Timeout { .. } | Error::UnknownTransfer { .. }
                );
                if had_session {
                    // We had a session: the sender is alive, restart the window.
                    deadline = Instant::now() + window;
                    delay = Duration::from_millis(250);
                }
                if Instant::now() >= deadline {
                    break fail(ctx, id, cause.take().or(last.take()).unwrap_or(e)).await;
                }
                if had_session {
                    cause = Some(e);
                } else {
                    last = Some(e);
                }
                tokio::select! {
                    biased;
                    () = cancel.cancelled() => {}
                    () = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(e) => break fail(ctx, id, e).await,
        }
    };
    drop(lock);
    outcome
}

pub(crate) async fn resume(
    ctx: Ctx,
    id: String,
    window: Duration,
    cancel: CancellationToken,
    reply: oneshot::Sender<Result<()>>,
) {
    let id2 = id.clone();
    let row = match ctx.store.call(move |s| s.transfer(&id2)).await {
        Ok(Some(r)) => r,
        Ok(None) => {
            let e = Error::UnknownTransfer { id: id.clone() };
            ctx.finished(&id, Outcome::failed(&e)).await;
            let _ = reply.send(Err(e));
            return;
        }
        Err(e) => {
            ctx.finished(&id, Outcome::failed(&e)).await;
            let _ = reply.send(Err(e));
            return;
        }
    };
    if row.state == "completed" {
        let e = Error::AlreadyFinished { id: id.clone() };
        ctx.finished(&id, Outcome::failed(&e)).await;
        let _ = reply.send(Err(e));
        return;
    }
    match row.direction {
        Direction::Send => {
            if row.resume_secret.is_none() {
                let e = Error::InvalidInput {
                    reason:
                        "no receiver ever connected to this transfer; send it again for a new code"
                            .into(),
                };
                ctx.finished(&id, Outcome::failed(&e)).await;
                let _ = reply.send(Err(e));
                return;
            }
            let lock = match TransferLock::acquire(&ctx.config.data_dir, &id) {
                Ok(l) => l,
                Err(e) => {
                    ctx.finished(&id, Outcome::failed(&e)).await;
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            let listener = match tcp::listen(&row.peer_addr).await {
                Ok(l) => l,
                Err(e) => {
                    ctx.finished(&id, Outcome::failed(&e)).await;
                    let _ = reply.send(Err(e));
                    return;
                }
            };
            let _ = reply.send(Ok(()));
            set_state(&ctx.store, &ctx, &id, "interrupted", None).await;
            let outcome = match (row.signal_url.clone(), row.resume_secret) {
                (Some(url), Some(secret)) => {
                    // Back at the rendezvous, so the receiver finds us from anywhere.
                    let mut ctx = ctx.clone();
                    ctx.signal = Some(url);
                    let addrs = tcp_paths(&ctx, &listener);
                    let (conn_tx, conn_rx) = mpsc::channel(4);
                    let rendezvous = rendezvous_loop(&ctx, None, secret, addrs, conn_tx, &cancel);
                    let serving = seed(&ctx, &id, listener, Some(conn_rx), None, &cancel);
                    tokio::pin!(rendezvous, serving);
                    tokio::select! {
                        outcome = &mut serving => outcome,
                        () = &mut rendezvous => serving.await,
                    }
                }
                _ => seed(&ctx, &id, listener, None, None, &cancel).await,
            };
            drop(lock);
            ctx.finished(&id, outcome).await;
        }
        Direction::Receive => {
            let _ = reply.send(Ok(()));
            let outcome = reconnect_loop(&ctx, &id, window, &cancel, None).await;
            ctx.finished(&id, outcome).await;
        }
    }
}

/// Rows for `list` (runs on the blocking pool).
pub(crate) fn list(store: &Store) -> Result<Vec<TransferInfo>> {
    let rows = store.transfers()?;
    let mut out = Vec::with_capacity(rows.len());
    for t in rows {
        let manifest = Manifest::decode(t.manifest.as_bytes()).ok();
        let files = manifest.as_ref().map(Manifest::file_count).unwrap_or(0);
        let held = if t.direction == Direction::Receive {
            let done: u64 = match &manifest {
                Some(m) => {
                    let rows = store.recv_files(&t.id)?;
                    rows.iter()
                        .filter(|r| r.done)
                        .map(|r| m.entries.get(r.idx as usize).map(Entry::size).unwrap_or(0))
                        .sum()
                }
                None => 0,
            };
            let chunk = manifest
                .as_ref()
                .map(|m| u64::from(m.chunk_size))
                .unwrap_or(0);
            Some((done + store.held_chunks(&t.id)? * chunk).min(t.total_bytes))
        } else {
            None
        };
        out.push(TransferInfo {
            id: t.id,
            direction: t.direction.as_str(),
            state: t.state,
            peer: t.peer_addr,
            peer_name: t.peer_name,
            signal_url: t.signal_url,
            path: t.path_kind,
            files,
            total: t.total_bytes,
            held,
            dest: t.dest_dir,
            error: t.error,
            created: t.created,
        });
    }
    Ok(out)
}
