//! Skiff desktop app: a thin Tauri shell over `skiff-core`.
//!
//! Owns: wiring — plugins, commands, the native drop handler (which calls the same
//! `AppState::offer_paths` as "Choose files…"), forwarding peer-list changes, shutdown.
//! Must not: contain transfer logic (the engine's) or import anything UI-specific beyond
//! Tauri; `build` is generic over the runtime so tests run it on the mock runtime.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod bridge;
pub mod commands;
pub mod dto;
pub mod lan;
pub mod network;
pub mod state;

use std::path::PathBuf;

use serde::Serialize;
use tauri::{DragDropEvent, Emitter, Manager, Runtime, WindowEvent};

pub use state::AppState;

/// While files are dragged over the window.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DragHover {
    pub over: bool,
    pub count: usize,
}

/// Starts the engine and the network side for `data_dir` (before any window exists).
pub fn start_state(data_dir: PathBuf) -> anyhow::Result<AppState> {
    tauri::async_runtime::block_on(AppState::start(data_dir))
}

/// As [`start_state`], with the embedded server on `embedded` instead of the defaults
/// (tests keep it on loopback, so nothing is announced on the host's network).
pub fn start_state_with(
    data_dir: PathBuf,
    embedded: network::EmbeddedOptions,
) -> anyhow::Result<AppState> {
    tauri::async_runtime::block_on(AppState::start_with(data_dir, embedded))
}

/// The app on any runtime: plugins, commands, the started state, notifications, peer-list
/// forwarding and the drop handler.
pub fn build<R: Runtime>(builder: tauri::Builder<R>, state: AppState) -> tauri::Builder<R> {
    builder
        .manage(state)
        .plugin(tauri_plugin_dialog::init())
        .plugin(tauri_plugin_notification::init())
        .invoke_handler(tauri::generate_handler![
            commands::app_info,
            commands::subscribe_events,
            commands::send_paths,
            commands::check_code,
            commands::start_receive,
            commands::offer_entries,
            commands::decide_offer,
            commands::pending_requests,
            commands::list_transfers,
            commands::resume_transfer,
            commands::cancel_transfer,
            commands::pause_transfer,
            commands::open_folder,
            commands::get_settings,
            commands::save_settings,
            commands::check_signal_address,
            commands::test_connection,
            commands::get_peers,
            commands::set_peer_trust,
            commands::send_to_peer,
            commands::get_lan_peers,
            commands::send_to_lan_peer,
        ])
        .setup(move |app| {
            let state = app.state::<AppState>();
            let handle = app.handle().clone();
            state.bridge.set_notifier(move |title, body| {
                use tauri_plugin_notification::NotificationExt;
                // Best effort: without a notification daemon this fails quietly.
                let _ = handle
                    .notification()
                    .builder()
                    .title(title)
                    .body(body)
                    .show();
            });
            let mut peers = tauri::async_runtime::block_on(state.network.lock())
                .peers
                .subscribe();
            let (handle, stop) = (app.handle().clone(), state.cancel.child_token());
            // Setup runs on the main thread: spawn on the async runtime explicitly.
            let rt = tauri::async_runtime::handle();
            state.tasks.spawn_on(
                async move {
                    loop {
                        tokio::select! {
                            biased;
                            () = stop.cancelled() => return,
                            changed = peers.changed() => {
                                if changed.is_err() {
                                    return;
                                }
                                let list = peers.borrow_and_update().clone();
                                let _ = handle.emit("peers-changed", list);
                            }
                        }
                    }
                },
                rt.inner(),
            );
            Ok(())
        })
        .on_window_event(|window, event| {
            if let WindowEvent::DragDrop(drag) = event {
                on_drag(window.app_handle(), drag);
            }
        })
}

/// Native file drops: hover state to the UI, and the dropped paths into `offer_paths`.
fn on_drag<R: Runtime>(app: &tauri::AppHandle<R>, drag: &DragDropEvent) {
    match drag {
        DragDropEvent::Enter { paths, .. } => {
            let _ = app.emit(
                "drag-hover",
                DragHover {
                    over: true,
                    count: paths.len(),
                },
            );
        }
        DragDropEvent::Leave => {
            let _ = app.emit(
                "drag-hover",
                DragHover {
                    over: false,
                    count: 0,
                },
            );
        }
        DragDropEvent::Drop { paths, .. } => {
            let _ = app.emit(
                "drag-hover",
                DragHover {
                    over: false,
                    count: 0,
                },
            );
            tracing::info!(count = paths.len(), "files dropped");
            let paths = paths.clone();
            let app = app.clone();
            let Some(state) = app.try_state::<AppState>() else {
                return;
            };
            let tasks = state.tasks.clone();
            // Window events arrive on the main thread: spawn on the async runtime explicitly.
            let rt = tauri::async_runtime::handle();
            tasks.spawn_on(
                async move {
                    let Some(state) = app.try_state::<AppState>() else {
                        return;
                    };
                    match state.offer_paths(paths).await {
                        Ok(share) => {
                            let _ = app.emit("share-started", share);
                        }
                        Err(e) => {
                            let _ = app.emit("share-failed", e);
                        }
                    }
                },
                rt.inner(),
            );
        }
        _ => {}
    }
}

/// Runs the desktop app (the binary's `main`).
pub fn run() -> anyhow::Result<()> {
    let filter = std::env::var("SKIFF_LOG").unwrap_or_else(|_| "warn,skiff_app=info".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let state = start_state(state::data_dir_from_env())?;
    let app = build(tauri::Builder::default(), state)
        .build(tauri::generate_context!())
        .map_err(|e| anyhow::anyhow!("starting the window: {e}"))?;
    app.run(|handle, event| {
        if let tauri::RunEvent::Exit = event {
            if let Some(state) = handle.try_state::<AppState>() {
                tauri::async_runtime::block_on(state.shutdown());
            }
        }
    });
    Ok(())
}
