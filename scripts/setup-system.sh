#!/usr/bin/env bash
# Installs the system packages Skiff's build and tests need (Debian/Ubuntu), if missing.
# Rust (cargo) and Node are expected to be present already.
set -euo pipefail
need=()
# coturn iproute2 iptables conntrack openssl python3: the NAT lab tests (tests/netlab/; python3 runs
# netdelay.py, the WAN delay on kernels without sch_netem).
for pkg in build-essential pkg-config coturn iproute2 iptables conntrack openssl time procps python3; do
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
