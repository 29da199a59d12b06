#!/usr/bin/env bash
# One skiff direct transfer with both sides under `perf record` (flat profile, 999 Hz), to see where
# the CPU goes when a target is missed. Not part of the timed numbers (perf adds overhead).
# usage: [SKIFF=path] [PORT=4300] [MODE=direct|webrtc] bench/profile.sh [SIZE_MIB=1024]
#   MODE=webrtc: a local skiff-signal on 127.0.0.1:PORT+100 and `--webrtc-only send/receive --signal`
#   (the WebRTC data channel, issue 5) instead of `--direct`.
# Output: $W/run/skiff-profile/{snd,rcv}.perf.data and the top symbols of each side on stdout.
set -euo pipefail
source "$(dirname "$0")/common.sh"; in_netns "$@"
command -v perf > /dev/null || { echo "perf not found" >&2; exit 1; }
SIZE=${1:-1024}; F=$(mkfile "rand${SIZE}m.bin" "$SIZE"); SUM=$(cat "$F.sha256")
d=$W/run/skiff-profile; rm -rf "$d"; mkdir -p "$d/ds" "$d/dr" "$d/out"; P=${PORT:-4300}
if [ "${MODE:-direct}" = webrtc ]; then
  "${SKIFF_SIGNAL_BIN:-$(dirname "$SKIFF")/skiff-signal}" --listen "127.0.0.1:$(( P + 100 ))" > "$d/signal.log" 2>&1 &
  SIGPID=$!; trap 'kill $SIGPID 2>/dev/null || true' EXIT; sleep 0.5
  SND=(--webrtc-only --data-dir "$d/ds" send --signal "ws://127.0.0.1:$(( P + 100 ))/ws")
  RCV=(--webrtc-only --data-dir "$d/dr" receive --signal "ws://127.0.0.1:$(( P + 100 ))/ws")
else
  SND=(--data-dir "$d/ds" send --direct "127.0.0.1:$P"); RCV=(--data-dir "$d/dr" receive --direct "127.0.0.1:$P")
fi
perf record -q -F 999 -o "$d/snd.perf.data" -- "$SKIFF" "${SND[@]}" --json "$F" \
  > "$d/snd.out" 2> "$d/snd.err" &
SP=$!
wait_for "$d/snd.out" '"event": *"code"' 120
T1=$(now)
SKIFF_CODE=$(json_get "$d/snd.out" code code) perf record -q -F 999 -o "$d/rcv.perf.data" -- \
  "$SKIFF" "${RCV[@]}" --dir "$d/out" --yes --json > "$d/rcv.out" 2> "$d/rcv.err"
T2=$(now)
for _ in $(seq 300); do kill -0 $SP 2>/dev/null || break; sleep 0.1; done; kill -INT $SP 2>/dev/null || true; wait $SP || true
m=$([ "$(sha256sum < "$d/out/$(basename "$F")" | cut -d' ' -f1)" = "$SUM" ] && echo ok || echo MISMATCH)
echo "profiled run (${MODE:-direct}): $SIZE MiB, recv $(awk -v a="$T1" -v b="$T2" 'BEGIN{printf "%.2f", b-a}') s under perf, sha256 $m"
rm -rf "$d/out" "$d/ds" "$d/dr"
for s in snd rcv; do
  echo "### $s: top symbols (self, % of samples)"
  perf report -i "$d/$s.perf.data" --stdio --no-children --sort dso,sym 2>/dev/null | grep -vE '^#|^$' | head -${TOP:-25}
  echo "### $s: by dso"
  perf report -i "$d/$s.perf.data" --stdio --no-children --sort dso 2>/dev/null | grep -vE '^#|^$' | head -8
done
