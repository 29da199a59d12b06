#!/usr/bin/env bash
# Time to first byte for a big sparse file (default 10 GiB, `truncate -s`): skiff must not hash
# the whole file before it streams. Nothing close to the full size is moved: the receiver is
# killed at its first progress event with bytes > 0, then the sender is stopped.
# usage: [SKIFF=path] [TTFB_REPS=3] [PORT=4200] bench_skiff_ttfb.sh [SIZE_GIB=10]
# Both sides' --json stdout lines are timestamped on arrival (bash $EPOCHREALTIME). Appends one row
# per run to $RES/ttfb.csv:
#   code_s   sender start -> its "code" event (sender preparation)
#   rcv_first_event_s  receiver start -> its first JSON line of any kind
#   ttfb_s   receiver start -> first "progress" event with bytes > 0   (the target: <= 1 s)
#   e2e_first_s  sender start -> that same progress event
#   connected_to_first_s  receiver's "connected" event (if it prints one) -> that progress event
set -euo pipefail
source "$(dirname "$0")/common.sh"; in_netns "$@"
[ -x "$SKIFF" ] || { echo "skiff binary not found: $SKIFF (set SKIFF=...)" >&2; exit 1; }
G=${1:-10}; F=$DATA/sparse${G}g.bin
[ "$(stat -c%s "$F" 2>/dev/null)" = $(( G << 30 )) ] || { rm -f "$F"; truncate -s "${G}G" "$F"; }
R=$W/run/skiff-ttfb; rm -rf "$R/$G-"*; mkdir -p "$R"
CSV=$RES/ttfb.csv; [ -f "$CSV" ] || echo "tool,size_gib,run,load1,code_s,rcv_first_event_s,ttfb_s,e2e_first_s,first_bytes,note,connected_to_first_s" > "$CSV"
for r in $(seq 1 "${TTFB_REPS:-3}"); do
  d=$R/$G-$r; mkdir -p "$d/ds" "$d/dr" "$d/out"; P=$(( ${PORT:-4200} + r )); L=$(load1)
  T0=$EPOCHREALTIME
  "$SKIFF" --data-dir "$d/ds" send --direct "127.0.0.1:$P" --json "$F" > >(stamp > "$d/snd.out") 2> "$d/snd.err" &
  SP=$!
  wait_for "$d/snd.out" '"event": *"code"' 120 || { stop $SP; cat "$d/snd.err" >&2; exit 1; }
  code=$(json_get "$d/snd.out" code code)
  T1=$EPOCHREALTIME
  SKIFF_CODE=$code "$SKIFF" --data-dir "$d/dr" receive --direct "127.0.0.1:$P" --dir "$d/out" --yes --json \
    > >(stamp > "$d/rcv.out") 2> "$d/rcv.err" &
  RP=$!
  note=ok
  for _ in $(seq 600); do   # up to 60 s
    grep '"progress"' "$d/rcv.out" 2>/dev/null | grep -qE '"bytes": *[1-9]' && break
    kill -0 $RP 2>/dev/null || { note="receiver exited early"; break; }
    sleep 0.1
  done
  grep '"progress"' "$d/rcv.out" 2>/dev/null | grep -qE '"bytes": *[1-9]' || { [ "$note" = ok ] && note="no progress in 60 s"; }
  stop $RP; stop $SP; wait $RP $SP 2>/dev/null || true; sleep 0.2
  python3 - "$d/rcv.out" "$d/snd.out" "$T0" "$T1" "$G" "$r" "$L" "$note" >> "$CSV" <<'PY'
import json, sys
rcv, snd, t0, t1, g, r, load, note = sys.argv[1:]
t0, t1 = float(t0), float(t1)
def lines(f):
    for l in open(f, errors="replace"):
        ts, _, js = l.strip().partition(" ")
        try:
            yield float(ts), json.loads(js)
        except ValueError:
            pass
code = next((ts for ts, o in lines(snd) if isinstance(o, dict) and o.get("event") == "code"), None)
rl = list(lines(rcv))
first_ev = rl[0][0] if rl else None
conn = next((ts for ts, o in rl if isinstance(o, dict) and o.get("event") == "connected"), None)
fb = next(((ts, o) for ts, o in rl if isinstance(o, dict) and o.get("event") == "progress"
           and (o.get("bytes") or 0) > 0), None)
f = lambda x: f"{x:.3f}" if x is not None else "-"
print(",".join(["skiff", g, r, load, f(code - t0 if code else None), f(first_ev - t1 if first_ev else None),
                f(fb[0] - t1 if fb else None), f(fb[0] - t0 if fb else None),
                str(fb[1].get("bytes")) if fb else "-", note.replace(",", ";"),
                f(fb[0] - conn if fb and conn else None)]))
PY
  tail -1 "$CSV"
  rm -rf "$d/out" "$d/ds" "$d/dr"
done
