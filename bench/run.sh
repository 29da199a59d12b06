#!/usr/bin/env bash
# Skiff transfer benchmark (issue 3): ONE invocation measures, in the same run and interleaved
# (one rep of each in turn, the order rotated every rep), the machine limits the targets refer to
# (dd write+fsync, socat file->TCP->file = raw TCP copy of the same file, iperf3, cached read),
# skiff direct, sendme (relays disabled) and magic-wormhole (direct); then one BIG_MIB skiff run
# for peak RSS, then time to first byte on a TTFB_GIB sparse file; then the tables and targets.
# usage: [WORKDIR=/work/bench-work] [RES=...] [REPS=3] [SIZE_MIB=1024] [BIG_MIB=4096] [TTFB_GIB=10]
#        [SKIFF=path] [SKIFF_SHARED=/path/to/shared] [STEPS="limits skiff sendme wormhole"] bench/run.sh
#   BIG_MIB=0 / TTFB_GIB=0 skip those parts. Peer tools must be installed first:
#   IROH_RELAY_BUILD=0 WORKDIR=... ../shared/bench/peers/install.sh
# Output (in $RES, default $WORKDIR/results-skiff-<UTC time>): transfers.csv, limits.csv, ttfb.csv,
# versions.txt, tables.md (the shared summarize.py), report.md (skiff table + targets).
set -euo pipefail
OUT=${RES:-}
source "$(dirname "$0")/common.sh"
[ -x "$SKIFF" ] || { echo "skiff binary not found: $SKIFF (set SKIFF=...)" >&2; exit 1; }
SIZE=${SIZE_MIB:-1024}; BIG=${BIG_MIB:-4096}; TG=${TTFB_GIB:-10}
RES=${OUT:-$W/results-skiff-$(date -u +%Y%m%dT%H%M%SZ)}; mkdir -p "$RES"; RES=$(cd "$RES" && pwd)
export RES; N=$REPS
LOGS=$RES/logs; mkdir -p "$LOGS"
LOAD0=$(load1)
versions "REPS=$N SIZE_MIB=$SIZE BIG_MIB=$BIG TTFB_GIB=$TG WORKDIR=$W bench/run.sh" > "$RES/versions.txt"
cat "$RES/versions.txt"

step() { # step NAME RUN
  local p=$RES/parts/$2-$1 rc=0; mkdir -p "$p"
  echo "== rep $2/$N: $1 (load1 $(load1))"
  case $1 in
    limits) RES=$p REPS=1 ONLY='^(iperf3_tcp_1stream|socat_file_to_file_b1048576|dd_write_fsync|cat_read)$' \
              "$PEERS/bench_limits.sh" "$SIZE" || rc=$? ;;
    skiff) RES=$p REPS=1 "$SKIFF_BENCH/bench_skiff.sh" "$SIZE" || rc=$?
           mkdir -p "$LOGS/skiff-$SIZE-$2"; cp "$W/run/skiff/direct-$SIZE-1/"* "$LOGS/skiff-$SIZE-$2/" 2>/dev/null || true ;;
    sendme) RES=$p REPS=1 "$PEERS/bench_sendme.sh" "$SIZE" || rc=$?
           mkdir -p "$LOGS/sendme-$SIZE-$2"; cp "$W/run/sendme/disabled-$SIZE-1/"*.{out,time} "$LOGS/sendme-$SIZE-$2/" 2>/dev/null || true ;;
    wormhole) RES=$p REPS=1 "$PEERS/bench_wormhole.sh" "$SIZE" direct || rc=$?
           mkdir -p "$LOGS/wormhole-$SIZE-$2"; cp "$W/run/wormhole/direct-$SIZE-1/"*.{out,time} "$LOGS/wormhole-$SIZE-$2/" 2>/dev/null || true ;;
  esac
  [ $rc = 0 ] || echo "!! step $1 (rep $2) failed with exit $rc" | tee -a "$RES/errors.txt" >&2
  merge "$p" transfers "$2"; merge "$p" limits "$2"
}

mkfile "rand${SIZE}m.bin" "$SIZE" > /dev/null   # create the test file before the first timed step
read -r -a STEPS <<< "${STEPS:-limits skiff sendme wormhole}"   # STEPS="..." runs a subset
for r in $(seq 1 "$N"); do
  k=$(( (r - 1) % ${#STEPS[@]} ))
  for s in "${STEPS[@]:k}" "${STEPS[@]:0:k}"; do step "$s" "$r"; done
done

if [ "$BIG" -gt 0 ]; then
  if [ "$(df -Pm "$W" | awk 'NR==2{print $4}')" -gt $(( BIG * 3 )) ]; then
    echo "== big: skiff $BIG MiB (load1 $(load1))"
    p=$RES/parts/big; mkdir -p "$p"
    RES=$p REPS=1 "$SKIFF_BENCH/bench_skiff.sh" "$BIG" || echo "!! big skiff run failed" | tee -a "$RES/errors.txt" >&2
    mkdir -p "$LOGS/skiff-$BIG-1"; cp "$W/run/skiff/direct-$BIG-1/"* "$LOGS/skiff-$BIG-1/" 2>/dev/null || true
    merge "$p" transfers 1
  else echo "!! not enough disk for the $BIG MiB run" | tee -a "$RES/errors.txt" >&2; fi
fi
if [ "$TG" -gt 0 ]; then
  if [ "$(df -Pm "$W" | awk 'NR==2{print $4}')" -gt $(( TG * 1024 + 2048 )) ]; then
    echo "== ttfb: skiff $TG GiB sparse (load1 $(load1))"
    "$SKIFF_BENCH/bench_skiff_ttfb.sh" "$TG" || echo "!! ttfb run failed" | tee -a "$RES/errors.txt" >&2
    mkdir -p "$LOGS/ttfb"; cp -r "$W/run/skiff-ttfb/$TG-"* "$LOGS/ttfb/" 2>/dev/null || true
  else echo "!! not enough disk for the $TG GiB sparse run (the receiver may preallocate it)" | tee -a "$RES/errors.txt" >&2; fi
fi
echo "load1/5/15 at end $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/versions.txt"
python3 "$PEERS/summarize.py" "$RES" > "$RES/tables.md"
python3 "$SKIFF_BENCH/report.py" "$RES" "$SIZE" "$BIG" "$TG" | tee "$RES/report.md"
echo "results: $RES (report.md, tables.md, logs/)"
