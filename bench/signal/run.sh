#!/usr/bin/env bash
# Load benchmark of skiff-signal on loopback (bounded: about a minute per mode). Prints a
# Markdown table for BENCHMARKS.md.
#   bench/signal/run.sh [--tls] [extra bench flags, e.g. --idle 5000]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
tls=0
if [ "${1:-}" = "--tls" ]; then tls=1; shift; fi
ulimit -n 20000 2>/dev/null || true
cargo build --release -q -p skiff-signal --manifest-path "$root/Cargo.toml"
CARGO_TARGET_DIR="$target" cargo build --release -q --manifest-path "$here/Cargo.toml"
work="$(mktemp -d)"
config="$here/bench.toml"
client_tls=()
if [ "$tls" = 1 ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost -addext basicConstraints=critical,CA:FALSE -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
  { cat "$here/bench.toml"; } > "$work/bench.toml"
  sed -i "1i tls_cert = \"$work/cert.pem\"\ntls_key = \"$work/key.pem\"" "$work/bench.toml"
  config="$work/bench.toml"
  client_tls=(--tls "$work/cert.pem")
fi
"$target/release/skiff-signal" --config "$config" 2>"$work/log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -rf "$work"' EXIT
for _ in $(seq 50); do grep -q 'addr=' "$work/log" && break; sleep 0.1; done
addr="$(grep -o 'addr=[0-9.:]*' "$work/log" | head -1 | cut -d= -f2)"
echo "server pid $server on $addr, tls=$tls; $(nproc) cores; $(uname -r)" >&2
"$target/release/skiff-signal-bench" --addr "$addr" --pid "$server" "${client_tls[@]}" "$@"
