//! Terminal output: JSON lines, or human text with an indicatif progress bar on stderr.
//! Every name from the network is escaped before it is printed.

use std::io::IsTerminal;
use std::path::Path;
use std::sync::{Arc, Mutex};

use indicatif::{ProgressBar, ProgressStyle};
use skiff_core::names::{display_escape, shorten_middle};
use skiff_core::{Event, IncomingOffer, TransferInfo};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

pub struct Output {
    json: bool,
    bar: Arc<Mutex<Option<ProgressBar>>>,
}

pub struct Printer {
    task: JoinHandle<()>,
}

impl Printer {
    pub async fn finish(self) {
        // The node has shut down, so the event stream is closed and the task ends.
        let _ = self.task.await;
    }
}

fn human_bytes(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

impl Output {
    pub fn new(json: bool) -> Self {
        Self {
            json,
            bar: Arc::new(Mutex::new(None)),
        }
    }

    fn println_json(v: &serde_json::Value) {
        println!("{v}");
    }

    pub fn fatal(&self, e: &anyhow::Error) {
        if self.json {
            let kind = e
                .chain()
                .find_map(|c| c.downcast_ref::<skiff_core::Error>())
                .map(|c| c.code())
                .unwrap_or("error");
            Self::println_json(&serde_json::json!({
                "event": "error", "transfer": null, "kind": kind, "message": format!("{e:#}"),
            }));
        } else {
            eprintln!("Error: {}", display_escape(&format!("{e:#}")));
        }
    }

    pub fn note(&self, text: &str) {
        if !self.json {
            self.with_bar(|b| match b {
                Some(b) => b.println(text),
                None => eprintln!("{text}"),
            });
        }
    }

    fn with_bar<R>(&self, f: impl FnOnce(Option<&ProgressBar>) -> R) -> R {
        let guard = match self.bar.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        f(guard.as_ref())
    }

    pub fn show_code(&self, code: &str, listen: &str, signal: Option<&str>) {
        if self.json {
            return; // the `code` event carries it
        }
        eprintln!("Give this code to the receiver:\n\n    {code}\n");
        if std::io::stderr().is_terminal() {
            if let Some(qr) = qr(code) {
                eprintln!("{qr}");
            }
        }
        let on_lan = signal.is_none()
            && listen
                .parse()
                .is_ok_and(|a| skiff_core::lan::advertisable(&a));
        if on_lan {
            // Announced on the LAN: the receiver needs no address.
            eprintln!("On the other computer (same network) run:\n    skiff receive {code}");
            eprintln!(
                "(from another network: skiff receive --direct {}, then enter the code)",
                reachable(listen)
            );
        } else {
            let how = match signal {
                Some(url) => format!("skiff receive --signal {}", display_escape(url)),
                None => format!("skiff receive --direct {}", reachable(listen)),
            };
            eprintln!("On the other computer run:\n    {how}\nand enter the code when it asks.");
        }
        eprintln!("(works once; keep this running until the transfer completes)\n");
    }

    pub fn show_offer(&self, offer: &IncomingOffer, dir: &Path) {
        if self.json {
            return;
        }
        eprintln!(
            "{} wants to send you {} file(s){}, {} in total:",
            display_escape(&offer.sender),
            offer.files,
            if offer.dirs > 0 {
                format!(" in {} folder(s)", offer.dirs)
            } else {
                String::new()
            },
            human_bytes(offer.total)
        );
        for e in offer.entries.iter().take(20) {
            let name = shorten_middle(&display_escape(&e.path), 70);
            if e.dir {
                eprintln!("  {name}/");
            } else {
                eprintln!("  {name}  ({})", human_bytes(e.size));
            }
        }
        if offer.entries.len() > 20 {
            eprintln!("  … and {} more", offer.entries.len() - 20);
        }
        eprintln!("Save to {}", display_escape(&dir.display().to_string()));
    }

    pub fn trusted(&self, rows: &[skiff_core::TrustedDevice]) {
        if self.json {
            for r in rows {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                v["event"] = "trusted".into();
                println!("{v}");
            }
            return;
        }
        if rows.is_empty() {
            eprintln!("No trusted devices. Pin one with: skiff trust NAME --signal URL");
        }
        for r in rows {
            println!("{}  {}", r.device, display_escape(&r.name));
        }
    }

    pub fn list(&self, rows: &[TransferInfo]) {
        if self.json {
            for r in rows {
                let mut v = serde_json::to_value(r).unwrap_or_default();
                if let Some(o) = v.as_object_mut() {
                    o.insert("event".into(), "transfer".into());
                }
                Self::println_json(&v);
            }
            return;
        }
        if rows.is_empty() {
            println!("No transfers yet.");
            return;
        }
        for r in rows {
            let progress = match r.held {
                Some(h) if r.total > 0 => format!(
                    "{:.0}% of {}",
                    h as f64 * 100.0 / r.total as f64,
                    human_bytes(r.total)
                ),
                _ => human_bytes(r.total),
            };
            let arrow = if r.direction == "send" { "→" } else { "←" };
            println!(
                "{}  {arrow} {:<8}  {:<12} {} file(s), {progress}  {}{}",
                r.id,
                r.direction,
                r.state,
                r.files,
                r.path.as_deref().unwrap_or("-"),
                r.error
                    .as_deref()
                    .map(|e| format!("  ({})", display_escape(e)))
                    .unwrap_or_default()
            );
        }
    }

    pub fn spawn_printer(&self, mut events: broadcast::Receiver<Event>) -> Printer {
        let json = self.json;
        let bar = self.bar.clone();
        let task = tokio::spawn(async move {
            loop {
                let e = match events.recv().await {
                    Ok(e) => e,
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => break,
                };
                if json {
                    if let Ok(line) = serde_json::to_string(&e) {
                        println!("{line}");
                    }
                } else {
                    human(&bar, &e);
                }
            }
            if let Ok(mut b) = bar.lock() {
                if let Some(b) = b.take() {
                    b.abandon();
                }
            }
        });
        Printer { task }
    }
}

fn reachable(listen: &str) -> String {
    // 0.0.0.0 is not an address the receiver can dial; suggest this host's name instead.
    match listen.strip_prefix("0.0.0.0:") {
        Some(port) => format!("{}:{port}", skiff_core::config::device_name()),
        None => listen.to_owned(),
    }
}

fn human(bar: &Arc<Mutex<Option<ProgressBar>>>, e: &Event) {
    let mut guard = match bar.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    let say = |b: &Option<ProgressBar>, text: String| match b {
        Some(b) => b.println(text),
        None => eprintln!("{text}"),
    };
    match e {
        Event::Connected {
            path,
            remote,
            resumed,
            ..
        } => {
            let what = if *resumed { "Reconnected" } else { "Connected" };
            say(
                &guard,
                format!(
                    "{what} to {} over {} ({path})",
                    display_escape(remote),
                    path_words(path)
                ),
            );
        }
        Event::Verify {
            peer,
            device,
            phrase,
            trusted,
            ..
        } => {
            let who = format!(
                "{} (device {}…)",
                display_escape(peer),
                &device[..12.min(device.len())]
            );
            let text = if *trusted {
                format!("Verified trusted device {who}. Phrase: {phrase}")
            } else {
                format!(
                    "First contact with {who}.\n  Verification phrase: {phrase}\n  \
                     Check that the other screen shows the same phrase; `skiff trust` pins the device."
                )
            };
            say(&guard, text);
        }
        Event::Listening { device, name, .. } => {
            say(
                &guard,
                format!(
                    "Listening as {} (device {device}). Others send with: skiff send --to {} FILES",
                    display_escape(name),
                    display_escape(name)
                ),
            );
        }
        Event::Progress { bytes, total, .. } => {
            let b = guard.get_or_insert_with(|| {
                let b = ProgressBar::new(*total);
                b.set_style(
                    ProgressStyle::with_template(
                        "{bar:40.cyan/blue} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                b
            });
            b.set_length(*total);
            b.set_position(*bytes);
        }
        Event::Done { files, .. } => {
            if let Some(b) = guard.take() {
                b.finish_and_clear();
            }
            eprintln!("Done: {} file(s), all verified.", files.len());
            for f in files.iter().take(20) {
                eprintln!("  {}", display_escape(&f.path));
            }
        }
        Event::Error {
            message,
            resumable,
            transfer,
            ..
        } => {
            let hint = match (resumable, transfer) {
                (true, Some(id)) => format!(" (resumable: skiff resume {id})"),
                _ => String::new(),
            };
            say(&guard, format!("Error: {}{hint}", display_escape(message)));
        }
        Event::State { state, .. } if state == "interrupted" => {
            say(&guard, "Interrupted; waiting to reconnect…".to_owned());
        }
        _ => {}
    }
}

/// The connection path in words.
fn path_words(path: &str) -> &'static str {
    match path {
        "lan" => "the local network",
        "direct" => "a direct connection",
        "turn-udp" | "turn-tcp" | "turn-tls" => "a TURN relay (end-to-end encrypted)",
        _ => "an encrypted connection",
    }
}

/// The code's `skiff://` link as a QR code drawn with half blocks (two rows per line).
fn qr(code: &str) -> Option<String> {
    let link = skiff_proto::code::ShareCode::parse(code).ok()?.link();
    let qr = qrcode::QrCode::new(link.as_bytes()).ok()?;
    Some(
        qr.render::<qrcode::render::unicode::Dense1x2>()
            .dark_color(qrcode::render::unicode::Dense1x2::Light)
            .light_color(qrcode::render::unicode::Dense1x2::Dark)
            .quiet_zone(true)
            .build(),
    )
}
