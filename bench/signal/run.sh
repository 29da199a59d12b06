#!/usr/bin/env bash
# Load benchmark of skiff-signal on loopback (bounded: about a minute). Prints a Markdown
# table for BENCHMARKS.md. Usage: bench/signal/run.sh [extra bench flags, e.g. --idle 10000]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
target="${CARGO_TARGET_DIR:-$root/target}"
ulimit -n 20000 2>/dev/null || true
cargo build --release -q -p skiff-signal --manifest-path "$root/Cargo.toml"
CARGO_TARGET_DIR="$target" cargo build --release -q --manifest-path "$here/Cargo.toml"
log="$(mktemp)"
"$target/release/skiff-signal" --config "$here/bench.toml" 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 50); do grep -q 'addr=' "$log" && break; sleep 0.1; done
addr="$(grep -o 'addr=[0-9.:]*' "$log" | head -1 | cut -d= -f2)"
echo "server pid $server on $addr; $(nproc) cores; $(uname -r)" >&2
"$target/release/skiff-signal-bench" --addr "$addr" --pid "$server" "$@"
