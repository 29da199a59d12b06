#!/usr/bin/env bash
# skiff through a signaling server (issue 5): the share-code flow, on loopback or between two
# netlab hosts. On the pattern of bench_skiff.sh; both sides' --json lines are timestamped (stamp).
# usage: [SKIFF=path] [REPS=3] [VARIANT=webrtc|tcp|NAME] [WEBRTC_ONLY=1|0] bench_skiff_signal.sh [SIZE_MIB=1024]
#   Loopback (default): runs in a fresh loopback-only namespace and starts its own skiff-signal
#     on 127.0.0.1:PORT (default 4400; SKIFF_SIGNAL_BIN, default next to $SKIFF).
#     VARIANT=webrtc passes --webrtc-only (data over the WebRTC data channel), VARIANT=tcp does not
#     (the direct TCP address wins: path "lan").
#   Lab: LAB_SND=peerA LAB_RCV=peerB NETLAB=.../netlab.sh SIGNAL=ws://203.0.113.10:8080/ws
#     runs each side with `netlab.sh exec HOST` against an already running server; RELAY_PID
#     (coturn) is measured as the relay's CPU. WEBRTC_ONLY=1 adds --webrtc-only (default: as a
#     user would, without it).
# Sender:   skiff [--webrtc-only] --data-dir DS send --signal URL --json FILE
# Receiver: SKIFF_CODE=<code> skiff [--webrtc-only] --data-dir DR receive --signal URL --dir OUT --yes --json
# Rows: $RES/transfers.csv (tool skiff, variant VARIANT; match=ok only if both exit 0, the sha256
# on disk equals the source's and the receiver's done event reports it) and $RES/connect.csv:
#   code_s        sender start -> its "code" event
#   connected_s   receiver start (= code entered) -> receiver's "connected" event
#   first_byte_s  receiver start -> first "progress" with bytes > 0  (the issue's connect time)
#   data_mbps     bytes between the first and the last progress event / their time (steady rate)
#   path_snd / path_rcv  "path" of each side's done event; udp drops: RcvbufErrors increase;
#   remote_rcv    the receiver's connected.remote ("webrtc:IP:PORT" on the WebRTC path)
set -euo pipefail
source "$(dirname "$0")/common.sh"
[ -n "${LAB_SND:-}" ] || in_netns "$@"
[ -x "$SKIFF" ] || { echo "skiff binary not found: $SKIFF (set SKIFF=...)" >&2; exit 1; }
SIZE=${1:-1024}; V=${VARIANT:-webrtc}
F=$(mkfile "rand${SIZE}m.bin" "$SIZE"); SUM=$(cat "$F.sha256")
R=$W/run/skiff-signal; rm -rf "$R/$V-$SIZE-"*; mkdir -p "$R"
TO=${TIMEOUT_S:-$(( SIZE / 5 > 120 ? SIZE / 5 : 120 ))}   # per-process timeout: gives up below ~5 MB/s
CSV=$RES/connect.csv
[ -f "$CSV" ] || echo "tool,variant,size_mib,run,load1,code_s,connected_s,first_byte_s,data_mbps,path_snd,path_rcv,udp_drops_snd,udp_drops_rcv,note,remote_rcv" > "$CSV"
WO=()
if [ -n "${LAB_SND:-}" ]; then
  PS=("$NETLAB" exec "$LAB_SND"); PR=("$NETLAB" exec "$LAB_RCV"); SIG=$SIGNAL
  [ "${WEBRTC_ONLY:-0}" = 1 ] && WO=(--webrtc-only)
else
  PS=(); PR=(); [ "$V" = tcp ] || WO=(--webrtc-only)
  SIGBIN=${SKIFF_SIGNAL_BIN:-$(dirname "$SKIFF")/skiff-signal}
  SP0=${PORT:-4400}; SIG=ws://127.0.0.1:$SP0/ws
  "$SIGBIN" --listen "127.0.0.1:$SP0" > "$R/signal-$V.log" 2>&1 & SIGPID=$!
  trap 'stop $SIGPID' EXIT
  for _ in $(seq 100); do curl -fs "http://127.0.0.1:$SP0/healthz" > /dev/null 2>&1 && break; sleep 0.1; done
fi
for r in $(seq 1 "$REPS"); do
  d=$R/$V-$SIZE-$r; mkdir -p "$d/ds" "$d/dr" "$d/out"; L=$(load1)
  c0=$([ -n "${RELAY_PID:-}" ] && pidcpu "$RELAY_PID" || echo 0)
  u0s=$(udp_drops "${PS[@]}"); u0r=$(udp_drops "${PR[@]}")
  T0=$(now); E0=$EPOCHREALTIME
  "${PS[@]}" /usr/bin/time -v -o "$d/snd.time" timeout -k 5 "$TO" \
    "$SKIFF" "${WO[@]}" --data-dir "$d/ds" send --signal "$SIG" --json "$F" > >(stamp > "$d/snd.out") 2> "$d/snd.err" &
  SP=$!
  wait_for "$d/snd.out" '"event": *"code"' 120 || { kill "$(pgrep -P $SP)" 2>/dev/null; wait $SP || true; cat "$d/snd.err" >&2; exit 1; }
  T1=$(now); E1=$EPOCHREALTIME
  code=$(json_get "$d/snd.out" code code)
  rc_r=0
  SKIFF_CODE=$code "${PR[@]}" /usr/bin/time -v -o "$d/rcv.time" timeout -k 5 "$TO" \
    "$SKIFF" "${WO[@]}" --data-dir "$d/dr" receive --signal "$SIG" --dir "$d/out" --yes --json \
    > >(stamp > "$d/rcv.out") 2> "$d/rcv.err" || rc_r=$?
  T2=$(now)
  for _ in $(seq 300); do kill -0 $SP 2>/dev/null || break; sleep 0.1; done
  sk=; if kill -0 $SP 2>/dev/null; then sk=" snd-stopped"; kill -TERM "$(pgrep -P $SP)" 2>/dev/null || true; fi
  rc_s=0; wait $SP || rc_s=$?
  sleep 0.3   # let the stamp readers flush
  c1=$([ -n "${RELAY_PID:-}" ] && pidcpu "$RELAY_PID" || echo 0)
  u1s=$(udp_drops "${PS[@]}"); u1r=$(udp_drops "${PR[@]}")
  out=$d/out/$(basename "$F")
  got=$([ -f "$out" ] && sha256sum < "$out" | cut -d' ' -f1 || echo none)
  rep=$(json_get "$d/rcv.out" done files | python3 -c 'import json,sys
try: print(json.loads(sys.stdin.read() or "[]")[0]["sha256"])
except Exception: print("none")')
  ps_=$(json_get "$d/snd.out" done path); pr_=$(json_get "$d/rcv.out" done path)
  m=MISMATCH; [ "$got" = "$SUM" ] && [ "$rep" = "$SUM" ] && [ $rc_r = 0 ] && [ $rc_s = 0 ] && m=ok
  [ "$m" = ok ] || echo "skiff $V run $r: disk sha256 $got, reported $rep, want $SUM; exit snd $rc_s rcv $rc_r$sk (logs: $d)" >&2
  row skiff "$V" "$SIZE" "$r" "$L" "$T0" "$T1" "$T2" "$d/snd.time" "$d/rcv.time" \
    "$([ -n "${RELAY_PID:-}" ] && awk "BEGIN{printf \"%.2f\", $c1 - $c0}" || echo -)" "$m" \
    "signal $SIG; path ${ps_:-?}/${pr_:-?}; ${WO[*]:-no --webrtc-only}; exit $rc_s/$rc_r$sk"
  python3 - "$d/snd.out" "$d/rcv.out" "$E0" "$E1" >> "$CSV" \
    "skiff,$V,$SIZE,$r,$L" "${ps_:-?},${pr_:-?},$(( u1s - u0s )),$(( u1r - u0r )),$m; exit $rc_s/$rc_r$sk" <<'PY'
import json, sys
snd, rcv, e0, e1, head, tail = sys.argv[1:]
e0, e1 = float(e0), float(e1)
def lines(f):
    for l in open(f, errors="replace"):
        ts, _, js = l.strip().partition(" ")
        try:
            o = json.loads(js)
        except ValueError:
            continue
        if isinstance(o, dict):
            yield float(ts), o
code = next((ts for ts, o in lines(snd) if o.get("event") == "code"), None)
rl = list(lines(rcv))
conn = next((ts for ts, o in rl if o.get("event") == "connected"), None)
prog = [(ts, o.get("bytes") or 0) for ts, o in rl if o.get("event") == "progress" and (o.get("bytes") or 0) > 0]
f = lambda x: f"{x:.3f}" if x is not None else "-"
rate = None
if len(prog) >= 2 and prog[-1][0] > prog[0][0]:
    rate = (prog[-1][1] - prog[0][1]) / (prog[-1][0] - prog[0][0]) / 1e6
remote = next((o.get("remote") for ts, o in rl if o.get("event") == "connected"), None) or "-"
print(",".join([head, f(code - e0 if code else None), f(conn - e1 if conn else None),
                f(prog[0][0] - e1 if prog else None), f(rate), tail,
                str(remote).replace(",", ";")]))
PY
  tail -1 "$CSV"
  rm -rf "$d/out" "$d/ds" "$d/dr"
done
