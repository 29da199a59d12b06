//! The `Node`: one handle over an owned actor task that starts, tracks and stops transfers.
//!
//! Owns: the map of running transfers (each with a child cancellation token), pending
//! accept decisions, finished outcomes and their waiters, and the peer list of the listen
//! space ([`Node::peers`], a `watch` the `listen` task keeps current). Every task it
//! starts is spawned on its `TaskTracker`; `shutdown` cancels all and waits for them.
//! Must not: await I/O in the actor loop itself (work runs in the spawned tasks).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use skiff_proto::signal::PeerInfo;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::events::{DoneFile, Event, Events, OfferEntry};
use crate::store::Store;
use crate::{tasks, Error, Result};

/// Options of a send.
#[derive(Debug, Clone, Default)]
pub struct SendOptions {
    /// Address to listen on for the receiver, e.g. `0.0.0.0:9000` (`:0` picks a port).
    pub listen: String,
    /// The signaling server of this one transfer (`ws://…/ws`), instead of the node's
    /// ([`Node::set_signal_url`]): e.g. the server of an app found on the LAN
    /// ([`crate::lan::LanDevice::signal_urls`]). The transfer stores it, so a resume meets
    /// the receiver there again.
    pub signal: Option<String>,
    /// Where the signaling server in use listens for the LAN (the app's embedded server,
    /// e.g. `0.0.0.0:47231`): a code's nameplate is then announced on the LAN as living on
    /// that server (an `snp=` record, see [`crate::lan`]) until the code's one attempt,
    /// so a receiver on another machine finds it. Ignored without a server and for
    /// sends to a device (they have no code).
    pub announce_server: Option<std::net::SocketAddr>,
}

/// A send that is ready for its receiver.
#[derive(Debug, Clone)]
pub struct SendStarted {
    pub id: String,
    pub code: String,
    pub listen: String,
    pub skipped: Vec<(PathBuf, String)>,
}

/// Options of a receive.
#[derive(Debug, Clone, Default)]
pub struct ReceiveOptions {
    /// Address of the sender (direct mode; unused when a signaling server is set). Empty:
    /// find the sender of the code on the LAN over mDNS (see [`crate::lan`]).
    pub connect: String,
    /// Destination folder; the configured download folder when `None`.
    pub dir: Option<PathBuf>,
    /// Accept the offer without waiting for [`Node::decide`].
    pub auto_accept: bool,
    /// How long to keep reconnecting after the connection drops.
    pub reconnect_for: Duration,
    /// The signaling server of this one transfer (`ws://…/ws`), instead of the node's;
    /// stored with the transfer, so a resume meets the sender there again. For
    /// [`Node::listen`]: the server it is online on, and that its receives use.
    pub signal: Option<String>,
    /// With a signaling server and no `connect` address: first look the code's nameplate
    /// up on the LAN (the app's embedded mode). A sender announced there is dialed
    /// directly, a code announced on a LAN signaling server is received through that
    /// server, and a code found nowhere on the LAN through the server in use. (Without
    /// a server and without `connect`, the LAN is always searched.)
    pub find_on_lan: bool,
}

/// Options of [`Node::listen`].
#[derive(Debug, Clone)]
pub struct ListenOptions {
    /// Presence space to be online in; `None`: the devices behind the same public address.
    pub space: Option<String>,
    /// How incoming transfers are received (`connect` is unused).
    pub receive: ReceiveOptions,
}

/// Whether [`Node::listen`] has this device online.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Not listening (never started, stopped, or failed: see [`PeerList::detail`]).
    #[default]
    Offline,
    /// Listening, (re)connecting to the signaling server.
    Connecting,
    /// Online in the space; [`PeerList::peers`] is the server's current list.
    Online,
}

/// The other devices online in the listen space, as [`Node::peers`] reports them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerList {
    pub presence: Presence,
    /// Why it is offline or reconnecting, in words.
    pub detail: Option<String>,
    /// Sorted by name; never this device itself, nor another device's short-lived
    /// connection for a peer-list send (ids starting with [`TRANSIENT_ID_PREFIX`]).
    pub peers: Vec<PeerInfo>,
}

/// Signaling device ids of short-lived sender connections (`skiff send --to`): not devices
/// anybody can send to, so peer lists leave them out. A send does not connect under its
/// device key, which would replace this device's own `listen` connection on the server.
pub const TRANSIENT_ID_PREFIX: &str = "tx-";

impl PeerList {
    /// Applies one signaling event of the listen link (`me`: this device's id); true if
    /// the list changed.
    pub(crate) fn apply(&mut self, me: &str, event: &crate::signal::SignalEvent) -> bool {
        use crate::signal::SignalEvent as E;
        let before = self.clone();
        let shown = |p: &PeerInfo| {
            p.device_id.as_str() != me && !p.device_id.as_str().starts_with(TRANSIENT_ID_PREFIX)
        };
        match event {
            E::Connected { .. } => {
                self.presence = Presence::Online;
                self.detail = None;
            }
            E::Peers { list } => {
                self.presence = Presence::Online;
                self.detail = None;
                self.peers = list.iter().filter(|p| shown(p)).cloned().collect();
            }
            E::PeerJoined { peer } if shown(peer) => {
                self.peers.retain(|p| p.peer_id != peer.peer_id);
                self.peers.push(peer.clone());
            }
            E::PeerLeft { peer_id } => self.peers.retain(|p| &p.peer_id != peer_id),
            E::Disconnected { reason, retry_in } => {
                self.presence = Presence::Connecting;
                let secs = retry_in.max(&Duration::from_secs(1)).as_secs();
                self.detail = Some(format!("{reason}; trying again in {secs} s"));
                self.peers.clear();
            }
            E::Stopped { reason } => {
                self.presence = Presence::Offline;
                self.detail = Some(reason.clone());
                self.peers.clear();
            }
            _ => {}
        }
        self.peers.sort_by(|a, b| {
            (a.name.to_lowercase(), a.device_id.as_str())
                .cmp(&(b.name.to_lowercase(), b.device_id.as_str()))
        });
        *self != before
    }
}

/// A pinned device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TrustedDevice {
    pub device: String,
    pub name: String,
}

/// What a sender offers, shown before accepting.
#[derive(Debug, Clone)]
pub struct IncomingOffer {
    pub id: String,
    pub sender: String,
    pub files: usize,
    pub dirs: usize,
    pub total: u64,
    pub entries: Vec<OfferEntry>,
}

impl IncomingOffer {
    /// The offer an [`Event::Offer`] carries (what a shell shows before it decides);
    /// `None` for any other event.
    pub fn from_event(event: Event) -> Option<Self> {
        match event {
            Event::Offer {
                transfer,
                sender,
                files,
                dirs,
                total,
                entries,
            } => Some(Self {
                id: transfer,
                sender,
                files,
                dirs,
                total,
                entries,
            }),
            _ => None,
        }
    }
}

/// The receiver's answer to an offer.
#[derive(Debug, Clone)]
pub enum Decision {
    Accept { dir: Option<PathBuf> },
    Decline,
}

/// How a transfer ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Done {
        path: String,
        files: Vec<DoneFile>,
    },
    Failed {
        kind: String,
        message: String,
        resumable: bool,
    },
}

impl Outcome {
    pub(crate) fn failed(e: &Error) -> Self {
        Outcome::Failed {
            kind: e.code().to_owned(),
            message: e.to_string(),
            resumable: e.is_resumable(),
        }
    }
}

/// A transfer as listed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TransferInfo {
    pub id: String,
    pub direction: &'static str,
    pub state: String,
    pub peer: String,
    pub peer_name: String,
    /// The signaling server the transfer met at (and a resume meets at), if any.
    pub signal_url: Option<String>,
    pub path: Option<String>,
    pub files: usize,
    pub total: u64,
    /// Bytes known to be safe at the receiver (receiver side only).
    pub held: Option<u64>,
    pub dest: Option<String>,
    pub error: Option<String>,
    pub created: i64,
}

pub(crate) enum Command {
    Send {
        paths: Vec<PathBuf>,
        opts: SendOptions,
        to: Option<tasks::SendTo>,
        reply: oneshot::Sender<Result<SendStarted>>,
    },
    Listen {
        opts: ListenOptions,
        reply: oneshot::Sender<Result<()>>,
    },
    Incoming {
        request: crate::pairing::DeviceRequest,
        trusted: bool,
        opts: ReceiveOptions,
    },
    Receive {
        code: String,
        opts: ReceiveOptions,
        reply: oneshot::Sender<Result<IncomingOffer>>,
    },
    Decide {
        id: String,
        decision: Decision,
        reply: oneshot::Sender<Result<()>>,
    },
    Resume {
        id: String,
        reconnect_for: Duration,
        reply: oneshot::Sender<Result<()>>,
    },
    Cancel {
        id: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Pause {
        id: String,
        reply: oneshot::Sender<Result<()>>,
    },
    Wait {
        id: String,
        reply: oneshot::Sender<Outcome>,
    },
    SetSignal {
        url: Option<String>,
        reply: oneshot::Sender<()>,
    },
    SetName {
        name: String,
        reply: oneshot::Sender<()>,
    },
    // From the node's own tasks:
    Started {
        id: String,
        running: Running,
    },
    Offered {
        id: String,
        running: Running,
        decision: oneshot::Sender<Decision>,
    },
    Finished {
        id: String,
        outcome: Outcome,
    },
}

/// Shared by the node's tasks.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub store: Store,
    pub config: Config,
    pub events: Events,
    pub internal: mpsc::Sender<Command>,
    /// Signaling server (`ws://…/ws`), see [`Node::set_signal_url`].
    pub signal: Option<String>,
    /// Interrupts this task's transfer (resumable) instead of cancelling it: a child of
    /// the node's root token (shutdown), or the transfer's own (pause).
    pub shutdown: CancellationToken,
    /// The peer list of the listen space (written by the `listen` task only).
    pub presence: watch::Sender<PeerList>,
    /// Set when the interruption is a pause: the transfer ends `paused`, not `interrupted`.
    pub paused: CancellationToken,
}

impl Ctx {
    pub(crate) async fn finished(&self, id: &str, outcome: Outcome) {
        let _ = self
            .internal
            .send(Command::Finished {
                id: id.to_owned(),
                outcome,
            })
            .await;
    }
}

/// Handle to the engine. Cheap to clone.
#[derive(Clone)]
pub struct Node {
    cmds: mpsc::Sender<Command>,
    events: Events,
    store: Store,
    presence: watch::Receiver<PeerList>,
    cancel: CancellationToken,
    tasks: TaskTracker,
}

/// Checks the shape of a signaling URL given to the node.
fn check_ws(url: Option<&str>) -> Result<()> {
    match url {
        Some(u) if !(u.starts_with("ws://") || u.starts_with("wss://")) => {
            Err(Error::InvalidInput {
                reason: "use a ws:// or wss:// address, like wss://signal.example.org/ws".into(),
            })
        }
        _ => Ok(()),
    }
}

impl Node {
    /// Opens the data directory and starts the actor.
    pub async fn spawn(config: Config) -> Result<Self> {
        let dir = config.data_dir.clone();
        let (store, moved) = tokio::task::spawn_blocking(move || Store::open(&dir))
            .await
            .map_err(|_| Error::protocol("opening the store failed"))??;
        let events = Events::new();
        if let Some(aside) = moved {
            let e = Error::InvalidInput {
                reason: format!(
                    "the checkpoint database was damaged and was moved to {}",
                    aside.display()
                ),
            };
            events.error(None, &e);
        }
        let (cmds, inbox) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let tasks = TaskTracker::new();
        let (presence, presence_rx) = watch::channel(PeerList::default());
        let ctx = Ctx {
            store: store.clone(),
            config,
            events: events.clone(),
            internal: cmds.clone(),
            signal: None,
            shutdown: cancel.clone(),
            presence,
            paused: CancellationToken::new(),
        };
        let actor = Actor {
            inbox,
            ctx,
            cancel: cancel.clone(),
            tasks: tasks.clone(),
            running: HashMap::new(),
            decisions: HashMap::new(),
            finished: HashMap::new(),
            waiters: HashMap::new(),
        };
        tasks.spawn(actor.run());
        Ok(Self {
            cmds,
            events,
            store,
            presence: presence_rx,
            cancel,
            tasks,
        })
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T> {
        let (reply, rx) = oneshot::channel();
        self.cmds
            .send(make(reply))
            .await
            .map_err(|_| Error::NodeStopped)?;
        rx.await.map_err(|_| Error::NodeStopped)
    }

    /// Subscribes to the event stream.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// Offers `paths`; returns once the code exists and the listener is up.
    pub async fn send(&self, paths: Vec<PathBuf>, opts: SendOptions) -> Result<SendStarted> {
        check_ws(opts.signal.as_deref())?;
        self.ask(|reply| Command::Send {
            paths,
            opts,
            to: None,
            reply,
        })
        .await?
    }

    /// Sends `paths` to the device `peer` (its name, or its id or an 8+ character prefix of
    /// it) that is online in `space` on the signaling server: no code, the two device keys
    /// authenticate the session (`Event::Verify` carries the phrase both screens show).
    pub async fn send_to(
        &self,
        peer: &str,
        space: Option<String>,
        paths: Vec<PathBuf>,
        opts: SendOptions,
    ) -> Result<SendStarted> {
        check_ws(opts.signal.as_deref())?;
        let to = Some(tasks::SendTo {
            peer: peer.to_owned(),
            space,
        });
        self.ask(|reply| Command::Send {
            paths,
            opts,
            to,
            reply,
        })
        .await?
    }

    /// Keeps this device online in its space on the signaling server and receives what
    /// other devices send to it: each request shows up as `Event::Verify` + `Event::Offer`
    /// and waits for [`Node::decide`] unless auto-accepted. Runs until [`Node::cancel`]
    /// with the id `"listen"` or shutdown.
    pub async fn listen(&self, opts: ListenOptions) -> Result<()> {
        check_ws(opts.receive.signal.as_deref())?;
        self.ask(|reply| Command::Listen { opts, reply }).await?
    }

    /// Stops [`Node::listen`] (if it runs) and returns once it has ended, so that a new
    /// `listen` (another server, name or space) can start. Transfers it began go on.
    pub async fn stop_listening(&self) -> Result<()> {
        match self.cancel(LISTEN_ID).await {
            Ok(()) => self.wait(LISTEN_ID).await.map(|_| ()),
            Err(Error::UnknownTransfer { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The other devices online in the space [`Node::listen`] keeps this device in, live:
    /// `Offline` and empty while not listening. The `watch` always holds the latest list;
    /// `changed()` wakes on every join, leave, reconnect or stop.
    pub fn peers(&self) -> watch::Receiver<PeerList> {
        self.presence.clone()
    }

    /// This device's id (the public half of its key), created on first use.
    pub async fn device_id(&self) -> Result<String> {
        let dir = self.store.path().parent().map(std::path::Path::to_owned);
        let dir = dir.ok_or_else(|| Error::protocol("store without a folder"))?;
        tokio::task::spawn_blocking(move || {
            crate::device::DeviceKey::load_or_create(&dir).map(|k| k.id())
        })
        .await
        .map_err(|_| Error::protocol("device key task failed"))?
    }

    /// Pins a device: later sessions from a device with its name but another key fail.
    pub async fn trust(&self, device: &str, name: &str) -> Result<()> {
        let (device, name) = (device.to_owned(), name.to_owned());
        self.store.call(move |s| s.trust(&device, &name)).await
    }

    /// Unpins a device; false if it was not pinned.
    pub async fn forget(&self, device: &str) -> Result<bool> {
        let device = device.to_owned();
        self.store.call(move |s| s.forget(&device)).await
    }

    /// Pinned devices.
    pub async fn trusted(&self) -> Result<Vec<TrustedDevice>> {
        let rows = self.store.call(|s| s.trusted()).await?;
        Ok(rows
            .into_iter()
            .map(|(device, name)| TrustedDevice { device, name })
            .collect())
    }

    /// Connects with a code; returns the offer (already being accepted if `auto_accept`).
    pub async fn receive(&self, code: &str, opts: ReceiveOptions) -> Result<IncomingOffer> {
        check_ws(opts.signal.as_deref())?;
        let code = code.to_owned();
        self.ask(|reply| Command::Receive { code, opts, reply })
            .await?
    }

    /// Accepts or declines an offer returned by [`Node::receive`].
    pub async fn decide(&self, id: &str, decision: Decision) -> Result<()> {
        let id = id.to_owned();
        self.ask(|reply| Command::Decide {
            id,
            decision,
            reply,
        })
        .await?
    }

    /// Continues an interrupted transfer from its checkpoint (either side).
    pub async fn resume(&self, id: &str, reconnect_for: Duration) -> Result<()> {
        let id = id.to_owned();
        self.ask(|reply| Command::Resume {
            id,
            reconnect_for,
            reply,
        })
        .await?
    }

    /// Stops a running transfer, keeping its checkpoint: it ends in state `paused`, and
    /// [`Node::resume`] continues it. The peer sees an interruption and waits or retries.
    pub async fn pause(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.ask(|reply| Command::Pause { id, reply }).await?
    }

    pub async fn cancel(&self, id: &str) -> Result<()> {
        let id = id.to_owned();
        self.ask(|reply| Command::Cancel { id, reply }).await?
    }

    /// Waits until a running transfer ends.
    pub async fn wait(&self, id: &str) -> Result<Outcome> {
        let id = id.to_owned();
        self.ask(|reply| Command::Wait { id, reply }).await
    }

    /// Uses the signaling server at `url` (`ws://…/ws` or `wss://…/ws`) for transfers
    /// started from now on: a send's nameplate comes from it and the code's PAKE runs
    /// through it (it sees only sealed blobs). `None`: codes work over direct connections.
    pub async fn set_signal_url(&self, url: Option<String>) -> Result<()> {
        check_ws(url.as_deref())?;
        self.ask(|reply| Command::SetSignal { url, reply }).await
    }

    /// The name other devices see, for transfers and `listen` started from now on (a
    /// running `listen` keeps its name until it is started again).
    pub async fn set_device_name(&self, name: &str) -> Result<()> {
        let name = name.trim().to_owned();
        if name.is_empty() {
            return Err(Error::InvalidInput {
                reason: "the device name is empty".into(),
            });
        }
        self.ask(|reply| Command::SetName { name, reply }).await
    }

    /// Every transfer in the data directory.
    pub async fn list(&self) -> Result<Vec<TransferInfo>> {
        self.store.call(tasks::list).await
    }

    /// Ids of the transfers that can be resumed.
    pub async fn resumable(&self) -> Result<Vec<String>> {
        Ok(self
            .list()
            .await?
            .into_iter()
            .filter(|t| tasks::is_resumable_state(&t.state))
            .map(|t| t.id)
            .collect())
    }

    /// Cancels every task and returns once all of them have finished.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// The id under which the `listen` task runs (cancel it to stop listening).
pub const LISTEN_ID: &str = "listen";

/// A running transfer's controls.
pub(crate) struct Running {
    cancel: CancellationToken,
    /// Cancelling it interrupts the transfer; its `cancel` token is a child of it.
    interrupt: CancellationToken,
    paused: CancellationToken,
}

impl Running {
    pub(crate) fn of(ctx: &Ctx, cancel: CancellationToken) -> Self {
        Running {
            cancel,
            interrupt: ctx.shutdown.clone(),
            paused: ctx.paused.clone(),
        }
    }
}

struct Actor {
    inbox: mpsc::Receiver<Command>,
    ctx: Ctx,
    cancel: CancellationToken,
    tasks: TaskTracker,
    running: HashMap<String, Running>,
    decisions: HashMap<String, oneshot::Sender<Decision>>,
    finished: HashMap<String, Outcome>,
    waiters: HashMap<String, Vec<oneshot::Sender<Outcome>>>,
}

impl Actor {
    /// A context and cancellation token for a new task: the task's interrupt token is a
    /// child of the node's root, its cancel token a child of that.
    fn task_ctx(&self) -> (Ctx, CancellationToken) {
        let mut ctx = self.ctx.clone();
        ctx.shutdown = self.cancel.child_token();
        ctx.paused = CancellationToken::new();
        let token = ctx.shutdown.child_token();
        (ctx, token)
    }

    /// As [`Actor::task_ctx`], on the transfer's own signaling server when it has one.
    fn task_ctx_on(&self, signal: &Option<String>) -> (Ctx, CancellationToken) {
        let (mut ctx, token) = self.task_ctx();
        if signal.is_some() {
            ctx.signal.clone_from(signal);
        }
        (ctx, token)
    }

    async fn run(mut self) {
        loop {
            tokio::select! {
                biased;
                () = self.cancel.cancelled() => break,
                cmd = self.inbox.recv() => match cmd {
                    Some(cmd) => self.handle(cmd),
                    None => break,
                },
            }
        }
    }

    fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Send {
                paths,
                opts,
                to,
                reply,
            } => {
                let (ctx, token) = self.task_ctx_on(&opts.signal);
                self.tasks
                    .spawn(tasks::send(ctx, paths, opts, to, token, reply));
            }
            Command::Listen { opts, reply } => {
                if self.running.contains_key(LISTEN_ID) {
                    let _ = reply.send(Err(Error::InvalidInput {
                        reason: "already listening".into(),
                    }));
                    return;
                }
                // A new listen: `wait` must not see the outcome of an earlier one.
                self.finished.remove(LISTEN_ID);
                let (ctx, token) = self.task_ctx_on(&opts.receive.signal);
                self.running
                    .insert(LISTEN_ID.to_owned(), Running::of(&ctx, token.clone()));
                let internal = self.ctx.internal.clone();
                let listening = tasks::listen(ctx, opts, token, reply);
                self.tasks.spawn(async move {
                    listening.await;
                    let _ = internal
                        .send(Command::Finished {
                            id: LISTEN_ID.to_owned(),
                            outcome: Outcome::failed(&Error::Cancelled),
                        })
                        .await;
                });
            }
            Command::Incoming {
                request,
                trusted,
                opts,
            } => {
                let (ctx, token) = self.task_ctx_on(&opts.signal);
                self.tasks
                    .spawn(tasks::receive_device(ctx, request, trusted, opts, token));
            }
            Command::Receive { code, opts, reply } => {
                let (ctx, token) = self.task_ctx_on(&opts.signal);
                self.tasks
                    .spawn(tasks::receive(ctx, code, opts, token, reply));
            }
            Command::Decide {
                id,
                decision,
                reply,
            } => {
                let r = match self.decisions.remove(&id) {
                    Some(tx) => tx.send(decision).map_err(|_| Error::UnknownTransfer { id }),
                    None => Err(Error::UnknownTransfer { id }),
                };
                let _ = reply.send(r);
            }
            Command::Resume {
                id,
                reconnect_for,
                reply,
            } => {
                if self.running.contains_key(&id) {
                    let _ = reply.send(Ok(()));
                    return;
                }
                self.finished.remove(&id);
                let (ctx, token) = self.task_ctx();
                self.running
                    .insert(id.clone(), Running::of(&ctx, token.clone()));
                self.tasks
                    .spawn(tasks::resume(ctx, id, reconnect_for, token, reply));
            }
            Command::Cancel { id, reply } => {
                let r = match self.running.get(&id) {
                    Some(t) => {
                        t.cancel.cancel();
                        Ok(())
                    }
                    None => Err(Error::UnknownTransfer { id }),
                };
                let _ = reply.send(r);
            }
            Command::Pause { id, reply } => {
                let r = match self.running.get(&id) {
                    Some(t) => {
                        t.paused.cancel();
                        t.interrupt.cancel();
                        Ok(())
                    }
                    None => Err(Error::UnknownTransfer { id }),
                };
                let _ = reply.send(r);
            }
            Command::Wait { id, reply } => {
                if let Some(o) = self.finished.get(&id) {
                    let _ = reply.send(o.clone());
                } else {
                    self.waiters.entry(id).or_default().push(reply);
                }
            }
            Command::SetSignal { url, reply } => {
                self.ctx.signal = url;
                let _ = reply.send(());
            }
            Command::SetName { name, reply } => {
                self.ctx.config.device_name = name;
                let _ = reply.send(());
            }
            Command::Started { id, running } => {
                self.running.insert(id, running);
            }
            Command::Offered {
                id,
                running,
                decision,
            } => {
                self.running.insert(id.clone(), running);
                self.decisions.insert(id, decision);
            }
            Command::Finished { id, outcome } => {
                self.running.remove(&id);
                self.decisions.remove(&id);
                for w in self.waiters.remove(&id).unwrap_or_default() {
                    let _ = w.send(outcome.clone());
                }
                self.finished.insert(id, outcome);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::SignalEvent;
    use skiff_proto::signal::{DeviceId, PeerId};

    fn peer(peer: &str, device: &str, name: &str) -> PeerInfo {
        PeerInfo {
            peer_id: PeerId::try_from(peer.to_owned()).unwrap(),
            device_id: DeviceId::try_from(device.to_owned()).unwrap(),
            name: name.to_owned(),
        }
    }

    #[test]
    fn peer_list_follows_the_listen_link_without_itself_or_transient_senders() {
        let mut list = PeerList::default();
        let snapshot = SignalEvent::Peers {
            list: vec![
                peer("p1", "me", "this one"),
                peer("p2", "bbbb", "Zed"),
                peer("p3", "tx-0123", "sending"),
                peer("p4", "aaaa", "anna"),
            ],
        };
        assert!(list.apply("me", &snapshot));
        assert_eq!(list.presence, Presence::Online);
        let names: Vec<_> = list.peers.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["anna", "Zed"]);
        let joined = SignalEvent::PeerJoined {
            peer: peer("p5", "tx-99", "x"),
        };
        assert!(
            !list.apply("me", &joined),
            "a transient sender is not listed"
        );
        let left = SignalEvent::PeerLeft {
            peer_id: PeerId::try_from("p2".to_owned()).unwrap(),
        };
        assert!(list.apply("me", &left));
        assert_eq!(list.peers.len(), 1);
        let lost = SignalEvent::Disconnected {
            reason: "connection reset".into(),
            retry_in: Duration::from_millis(10),
        };
        assert!(list.apply("me", &lost));
        assert_eq!(list.presence, Presence::Connecting);
        assert!(list.peers.is_empty());
        assert_eq!(
            list.detail.as_deref(),
            Some("connection reset; trying again in 1 s")
        );
    }
}
