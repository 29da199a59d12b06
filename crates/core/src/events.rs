//! Events the engine reports: codes, offers, connection path, progress, results.
//!
//! Owns: the event enum (its JSON form is the CLI's `--json` contract: one object per line,
//! tagged by `event`) and progress smoothing (≤ 10 Hz, rate averaged over ~5 s).
//! Must not: block the engine when nobody listens (a broadcast channel drops for laggards).

use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::broadcast;

/// Something happened.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Event {
    /// Sender: the code to give the receiver.
    Code {
        transfer: String,
        code: String,
        link: String,
        listen: String,
    },
    /// Receiver: what the sender offers, waiting for a decision unless auto-accepted.
    Offer {
        transfer: String,
        sender: String,
        files: usize,
        dirs: usize,
        total: u64,
        entries: Vec<OfferEntry>,
    },
    /// Peer-list send: the other device proved its key. Both screens show `phrase`; on
    /// first contact (`trusted` false) the users compare it before accepting.
    Verify {
        transfer: String,
        peer: String,
        device: String,
        phrase: String,
        trusted: bool,
    },
    /// `listen`: this device is online in its space and accepts incoming transfers.
    Listening { device: String, name: String },
    /// A session with the peer is authenticated.
    Connected {
        transfer: String,
        path: String,
        remote: String,
        resumed: bool,
    },
    /// The transfer changed state.
    State { transfer: String, state: String },
    Progress {
        transfer: String,
        bytes: u64,
        total: u64,
        rate: u64,
        eta: Option<u64>,
    },
    /// One file verified and in place (receiver) or confirmed by the receiver (sender).
    FileDone {
        transfer: String,
        path: String,
        sha256: String,
    },
    Done {
        transfer: String,
        path: String,
        files: Vec<DoneFile>,
    },
    Error {
        transfer: Option<String>,
        kind: String,
        message: String,
        resumable: bool,
    },
}

/// An offered entry, sanitised for display (the local relative path).
#[derive(Debug, Clone, Serialize)]
pub struct OfferEntry {
    pub path: String,
    pub size: u64,
    pub dir: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoneFile {
    pub path: String,
    pub sha256: String,
}

/// Sending side of the event stream.
#[derive(Clone, Debug)]
pub struct Events(broadcast::Sender<Event>);

impl Events {
    pub fn new() -> Self {
        Self(broadcast::channel(4096).0)
    }

    pub fn emit(&self, e: Event) {
        let _ = self.0.send(e);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.0.subscribe()
    }

    pub fn error(&self, transfer: Option<&str>, e: &crate::Error) {
        self.emit(Event::Error {
            transfer: transfer.map(str::to_owned),
            kind: e.code().to_owned(),
            message: e.to_string(),
            resumable: e.is_resumable(),
        });
    }

    pub fn state(&self, transfer: &str, state: &str) {
        self.emit(Event::State {
            transfer: transfer.to_owned(),
            state: state.to_owned(),
        });
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

/// Progress with a smoothed rate, emitted at most every 100 ms.
pub struct Progress {
    transfer: String,
    total: u64,
    bytes: u64,
    last_emit: Option<Instant>,
    window: Vec<(Instant, u64)>,
}

impl Progress {
    pub fn new(transfer: &str, total: u64, already: u64) -> Self {
        Self {
            transfer: transfer.to_owned(),
            total,
            bytes: already,
            last_emit: None,
            window: vec![(Instant::now(), already)],
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    pub fn add(&mut self, n: u64, events: &Events) {
        self.bytes = self.bytes.saturating_add(n).min(self.total.max(self.bytes));
        let now = Instant::now();
        if self
            .last_emit
            .is_none_or(|t| now.duration_since(t) >= Duration::from_millis(100))
        {
            self.emit(now, events);
        }
    }

    /// Emits the current value now (e.g. at the end).
    pub fn flush(&mut self, events: &Events) {
        self.emit(Instant::now(), events);
    }

    fn emit(&mut self, now: Instant, events: &Events) {
        self.last_emit = Some(now);
        self.window.push((now, self.bytes));
        while self.window.len() > 2 && now.duration_since(self.window[0].0) > Duration::from_secs(5)
        {
            self.window.remove(0);
        }
        let (t0, b0) = self.window[0];
        let dt = now.duration_since(t0).as_secs_f64();
        let rate = if dt > 0.5 {
            ((self.bytes - b0) as f64 / dt) as u64
        } else {
            0
        };
        let eta = (rate > 0).then(|| self.total.saturating_sub(self.bytes) / rate);
        events.emit(Event::Progress {
            transfer: self.transfer.clone(),
            bytes: self.bytes,
            total: self.total,
            rate,
            eta,
        });
    }
}
