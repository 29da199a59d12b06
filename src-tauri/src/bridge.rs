//! From engine events to the UI: one task reads `Node::events()` and sends `UiEvent`s on
//! the window's `Channel`, progress coalesced to at most 10 per second per transfer.
//!
//! Owns: the UI channel, progress coalescing, per-transfer file counters, and OS
//! notifications when a transfer completes or fails.
//! Must not: send a message per file to the UI (a 100,000-file folder would flood it).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_core::events::Event;
use tauri::ipc::Channel;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use crate::dto::UiEvent;

/// How often coalesced progress is flushed (10 Hz).
pub const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

/// Shows an OS notification (title, body).
type Notifier = Box<dyn Fn(&str, &str) + Send + Sync>;

/// Where UI events go: the window's channel (set by `subscribe_events`), plus a
/// notification hook for completions and failures.
#[derive(Clone, Default)]
pub struct Bridge {
    channel: Arc<Mutex<Option<Channel<UiEvent>>>>,
    notify: Arc<Mutex<Option<Notifier>>>,
}

impl Bridge {
    /// Replaces the UI channel (a reloaded page subscribes again).
    pub fn set_channel(&self, channel: Channel<UiEvent>) {
        if let Ok(mut c) = self.channel.lock() {
            *c = Some(channel);
        }
    }

    pub fn set_notifier(&self, f: impl Fn(&str, &str) + Send + Sync + 'static) {
        if let Ok(mut n) = self.notify.lock() {
            *n = Some(Box::new(f));
        }
    }

    /// Sends one event to the UI; dropped when no window listens.
    pub fn send(&self, event: UiEvent) {
        let channel = self.channel.lock().ok().and_then(|c| c.clone());
        if let Some(c) = channel {
            let _ = c.send(event);
        }
    }

    /// Shows an OS notification (best effort).
    pub fn notify(&self, title: &str, body: &str) {
        if let Ok(n) = self.notify.lock() {
            if let Some(f) = n.as_ref() {
                f(title, body);
            }
        }
    }

    /// Forwards `events` until `stop` or until the node's event stream closes.
    pub async fn run(
        self,
        mut events: tokio::sync::broadcast::Receiver<Event>,
        stop: CancellationToken,
    ) {
        let mut pending: HashMap<String, UiEvent> = HashMap::new();
        let mut files_done: HashMap<String, u64> = HashMap::new();
        let mut tick = tokio::time::interval(PROGRESS_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                _ = tick.tick() => {
                    for (_, e) in pending.drain() {
                        self.send(e);
                    }
                }
                e = events.recv() => match e {
                    Ok(Event::Progress { transfer, bytes, total, rate, eta }) => {
                        let done = files_done.get(&transfer).copied().unwrap_or(0);
                        pending.insert(transfer.clone(), UiEvent::Progress {
                            id: transfer, bytes, total, rate, eta, files_done: done,
                        });
                    }
                    Ok(Event::FileDone { transfer, .. }) => {
                        *files_done.entry(transfer).or_default() += 1;
                    }
                    Ok(e) => {
                        if let Some(ui) = UiEvent::from_engine(&e) {
                            // The latest progress goes out before news that may end the transfer.
                            if let UiEvent::Done { id, .. } | UiEvent::State { id, .. } = &ui {
                                if let Some(p) = pending.remove(id) {
                                    self.send(p);
                                }
                            }
                            match &ui {
                                UiEvent::Done { id, files, .. } => {
                                    files_done.remove(id);
                                    let what = if *files == 1 { "1 file".to_owned() } else { format!("{files} files") };
                                    self.notify("Transfer complete", &format!("{what}, all verified"));
                                }
                                UiEvent::Error { id: Some(_), message, resumable: false, .. } => {
                                    self.notify("Transfer failed", message);
                                }
                                _ => {}
                            }
                            self.send(ui);
                        }
                    }
                    // Fell behind (e.g. a burst of per-file events): the list is fetched again.
                    Err(RecvError::Lagged(_)) => self.send(UiEvent::Refresh),
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }
}
