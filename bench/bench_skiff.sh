#!/usr/bin/env bash
# skiff direct TCP path on loopback, on the pattern of ../../shared/bench/peers/bench_sendme.sh.
# usage: [SKIFF=path] [REPS=3] [PORT=4100] bench_skiff.sh [SIZE_MIB=1024]
# Sender:   skiff --data-dir DIR_S send --direct 127.0.0.1:PORT --json FILE   (exits 0 when done)
# Receiver: SKIFF_CODE=<code> skiff --data-dir DIR_R receive --direct 127.0.0.1:PORT --dir OUT --yes --json
# Each run gets fresh data dirs and output dir; the output is hashed, then deleted.
# Appends one row per run to $RES/transfers.csv (tool skiff, variant direct); match=ok only if
# both processes exit 0, the sha256 of the file on disk equals the source's, and the receiver's
# "done" event reports the same digest.
set -euo pipefail
source "$(dirname "$0")/common.sh"; in_netns "$@"
[ -x "$SKIFF" ] || { echo "skiff binary not found: $SKIFF (set SKIFF=...)" >&2; exit 1; }
SIZE=${1:-1024}
F=$(mkfile "rand${SIZE}m.bin" "$SIZE"); SUM=$(cat "$F.sha256")
R=$W/run/skiff; rm -rf "$R/direct-$SIZE-"*; mkdir -p "$R"
TO=$(( SIZE / 10 > 120 ? SIZE / 10 : 120 ))   # per-process timeout: gives up below ~10 MB/s
for r in $(seq 1 "$REPS"); do
  d=$R/direct-$SIZE-$r; mkdir -p "$d/ds" "$d/dr" "$d/out"; P=$(( ${PORT:-4100} + r ))
  L=$(load1)
  T0=$(now)
  /usr/bin/time -v -o "$d/snd.time" timeout -k 5 "$TO" \
    "$SKIFF" --data-dir "$d/ds" send --direct "127.0.0.1:$P" --json "$F" > "$d/snd.out" 2> "$d/snd.err" &
  SP=$!
  wait_for "$d/snd.out" '"event": *"code"' 120 || { kill "$(pgrep -P $SP)" 2>/dev/null; wait $SP || true; cat "$d/snd.err" >&2; exit 1; }
  T1=$(now)
  code=$(json_get "$d/snd.out" code code)
  rc_r=0
  SKIFF_CODE=$code /usr/bin/time -v -o "$d/rcv.time" timeout -k 5 "$TO" \
    "$SKIFF" --data-dir "$d/dr" receive --direct "127.0.0.1:$P" --dir "$d/out" --yes --json \
    > "$d/rcv.out" 2> "$d/rcv.err" || rc_r=$?
  T2=$(now)
  # the sender exits by itself once the transfer is complete; give it 30 s, then stop it
  for _ in $(seq 300); do kill -0 $SP 2>/dev/null || break; sleep 0.1; done
  sk=; if kill -0 $SP 2>/dev/null; then sk=" snd-stopped"; kill -TERM "$(pgrep -P $SP)" 2>/dev/null || true; fi
  rc_s=0; wait $SP || rc_s=$?
  out=$d/out/$(basename "$F")
  got=$([ -f "$out" ] && sha256sum < "$out" | cut -d' ' -f1 || echo none)
  rep=$(json_get "$d/rcv.out" done files | python3 -c 'import json,sys
try: print(json.loads(sys.stdin.read() or "[]")[0]["sha256"])
except Exception: print("none")')
  m=MISMATCH; [ "$got" = "$SUM" ] && [ "$rep" = "$SUM" ] && [ $rc_r = 0 ] && [ $rc_s = 0 ] && m=ok
  [ "$m" = ok ] || echo "skiff run $r: disk sha256 $got, reported $rep, want $SUM; exit snd $rc_s rcv $rc_r$sk (logs: $d)" >&2
  row skiff direct "$SIZE" "$r" "$L" "$T0" "$T1" "$T2" "$d/snd.time" "$d/rcv.time" - "$m" \
    "TCP direct 127.0.0.1:$P; exit $rc_s/$rc_r$sk; $(ls -A "$d/out" | wc -l) file(s) in out"
  rm -rf "$d/out" "$d/ds" "$d/dr"
done
