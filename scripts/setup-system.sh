#!/usr/bin/env bash
# Installs the system packages Skiff's build and tests need (Debian/Ubuntu), if missing,
# and tauri-driver for the desktop app's end-to-end tests. Idempotent.
# Rust (cargo) and Node (>= 20.19) are expected to be present already.
set -euo pipefail
need=()
# coturn iproute2 iptables conntrack openssl python3: the NAT lab tests (tests/netlab/; python3 runs
# netdelay.py, the WAN delay on kernels without sch_netem).
pkgs=(build-essential pkg-config coturn iproute2 iptables conntrack openssl time procps python3
  # desktop app (Tauri 2 on WebKitGTK 4.1)
  curl wget file libssl-dev libxdo-dev libwebkit2gtk-4.1-dev libayatana-appindicator3-dev librsvg2-dev
  # desktop app tests: a virtual X server, pointer/keys, WebDriver, screenshots, the drag source
  xvfb xauth x11-utils xdotool webkit2gtk-driver imagemagick python3-gi gir1.2-gtk-3.0)
for pkg in "${pkgs[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# coturn's package may start a system service; Skiff's tests start their own.
if command -v systemctl >/dev/null 2>&1; then systemctl stop coturn >/dev/null 2>&1 || true; fi
command -v cargo >/dev/null || { echo "cargo not found: install Rust (https://rustup.rs)"; exit 1; }
command -v node >/dev/null || { echo "node not found: install Node.js 20.19 or newer (not Debian's 18)"; exit 1; }
node -e 'const [a,b]=process.versions.node.split(".").map(Number); process.exit(a>20||(a===20&&b>=19)?0:1)' ||
  { echo "Node $(node --version) is too old for Vite 8: install Node.js 20.19 or newer"; exit 1; }
# WebDriver bridge for the app's e2e tests (2.x only: 3.0 alphas are published).
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
if ! command -v tauri-driver >/dev/null 2>&1; then
  echo "installing tauri-driver"
  cargo install --locked tauri-driver --version '^2' >/dev/null
fi
