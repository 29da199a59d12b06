#!/usr/bin/env bash
# Runs the desktop app's end-to-end tests under Xvfb: tauri-driver + WebdriverIO against
# the debug app binary, the real engine, the app's built-in signaling server, a spawned
# skiff-signal, and the `skiff` CLI as the other side — all from one workspace build.
# Owns (and kills by PID) Xvfb and tauri-driver; tauri-driver owns WebKitWebDriver + the app.
# Screenshots go to $E2E_OUT (default test-output/e2e).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
export TAURI_APP=${TAURI_APP:-$TARGET/debug/skiff-app}
export SKIFF_BIN=${SKIFF_BIN:-$TARGET/debug/skiff}
export SKIFF_SIGNAL_BIN=${SKIFF_SIGNAL_BIN:-$TARGET/debug/skiff-signal}
for b in "$TAURI_APP" "$SKIFF_BIN" "$SKIFF_SIGNAL_BIN"; do
  [ -x "$b" ] || { echo "missing $b: build the workspace first (cargo build --workspace)"; exit 1; }
done
command -v tauri-driver >/dev/null || { echo "tauri-driver missing: scripts/setup-system.sh installs it"; exit 1; }
[ -d node_modules ] || npm ci --no-audit --no-fund

export E2E_OUT=${E2E_OUT:-$ROOT/test-output/e2e}
export E2E_WORK
E2E_WORK=$(mktemp -d /tmp/skiff-e2e.XXXXXX)
export SKIFF_DATA_DIR=$E2E_WORK/app-data
export E2E_DOWNLOADS=$E2E_WORK/downloads
mkdir -p "$SKIFF_DATA_DIR" "$E2E_DOWNLOADS" "$E2E_OUT"
chmod 700 "$SKIFF_DATA_DIR"
# The app reads its settings from here (the same file the CLI will read).
printf 'download_dir = "%s"\n' "$E2E_DOWNLOADS" >"$SKIFF_DATA_DIR/settings.toml"

export WEBKIT_DISABLE_COMPOSITING_MODE=1 LIBGL_ALWAYS_SOFTWARE=1 NO_AT_BRIDGE=1
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$E2E_WORK"
}
trap cleanup EXIT

# A display of our own (other X servers may run on this machine).
if [ -z "${DISPLAY_NUM:-}" ]; then
  for n in $(seq 90 140); do [ -e "/tmp/.X11-unix/X$n" ] || [ -e "/tmp/.X$n-lock" ] || { DISPLAY_NUM=":$n"; break; }; done
fi
export DISPLAY=$DISPLAY_NUM
Xvfb "$DISPLAY" -screen 0 1400x900x24 -nolisten tcp >"$E2E_OUT/xvfb.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do xdpyinfo >/dev/null 2>&1 && break; sleep 0.1; done

# A free port pair for tauri-driver and WebKitWebDriver.
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $(seq 4444 2 4600); do port_free "$p" && port_free $((p + 1)) && { PORT=$p; break; }; done
export TAURI_DRIVER_PORT=$PORT
# The app's built-in signaling server on a fixed port, so that a restarted app (the resume
# test) is on the same server as the CLI sender, which reconnects to it by itself.
for p in $(seq 47200 47300); do port_free "$p" && { export SKIFF_EMBEDDED_PORT=$p; break; }; done
# On loopback only: nothing is announced over mDNS on this machine's real network.
export SKIFF_EMBEDDED_HOST=127.0.0.1
tauri-driver --port "$PORT" --native-port $((PORT + 1)) --native-driver /usr/bin/WebKitWebDriver \
  >"$E2E_OUT/tauri-driver.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do port_free "$PORT" || break; sleep 0.1; done

echo "e2e: display $DISPLAY, tauri-driver :$PORT, app $TAURI_APP, screenshots in $E2E_OUT"
npx wdio run wdio.conf.js "$@"
