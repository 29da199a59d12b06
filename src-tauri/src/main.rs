//! `skiff-app`: the Skiff desktop window (see `skiff_app`).
#![cfg_attr(not(debug_assertions), windows_subsystem = "windows")]

fn main() -> std::process::ExitCode {
    match skiff_app::run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("skiff-app: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
