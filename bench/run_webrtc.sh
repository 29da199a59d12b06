#!/usr/bin/env bash
# WebRTC data path benchmark (issue 5): ONE invocation measures, interleaved (one rep of each in
# turn, the order rotated every rep) on the same SIZE_MIB random file:
#   webrtc   skiff --webrtc-only over a local skiff-signal, loopback (WebRTC data channel)
#   tcp      skiff over the same kind of server without --webrtc-only (direct TCP, path "lan")
#   sendme   the shared bench_sendme.sh (QUIC, relays disabled)
#   lab-cone skiff between netlab peerA and peerB behind cone NATs (expect path "direct")
#   lab-sym  the same behind symmetric NATs, through the lab's coturn: the server hands out TURN
#            over UDP and TCP, so after 3 s without WebRTC the RFC 6062 TCP relay races it
#   lab-sym-udp  the same against a server that hands out only TURN over UDP ("turn-udp")
# then lab-wan: cone <-> cone with both routers shaped (WAN_RATE, WAN_DELAY one-way per router,
# WAN_LOSS per router and direction) on a WAN_MIB file, WAN_REPS times; then connect.csv,
# transfers.csv, report.md (report_webrtc.py).
# The lab gets its own namespace prefix and run dir (NETLAB_PREFIX=skb-, NETLAB_RUN=/run/netlab-skb)
# so that it cannot collide with another user's netlab; it is torn down on exit. skiff-signal runs
# in the lab's srv namespace with a TOML config: coturn's secret and [turn] urls.
# usage (root, for the lab): [WORKDIR=/work/bench-work] [RES=...] [REPS=3] [SIZE_MIB=1024]
#        [STEPS="webrtc tcp sendme lab-cone lab-sym lab-sym-udp"] [WAN_MIB=128] [WAN_REPS=$REPS]
#        [WAN_RATE=50mbit] [WAN_DELAY=20ms] [WAN_LOSS=1%] bench/run_webrtc.sh
#   WAN_REPS=0 skips the shaped run; STEPS without lab-* and WAN_REPS=0 need no lab (and no root).
set -euo pipefail
OUT=${RES:-}
source "$(dirname "$0")/common.sh"
[ -x "$SKIFF" ] || { echo "skiff binary not found: $SKIFF (set SKIFF=...)" >&2; exit 1; }
SIGBIN=${SKIFF_SIGNAL_BIN:-$(dirname "$SKIFF")/skiff-signal}; export SKIFF_SIGNAL_BIN=$SIGBIN
[ -x "$SIGBIN" ] || { echo "skiff-signal binary not found: $SIGBIN (set SKIFF_SIGNAL_BIN=...)" >&2; exit 1; }
SIZE=${SIZE_MIB:-1024}; N=$REPS
WAN_MIB=${WAN_MIB:-128}; WAN_REPS=${WAN_REPS:-$N}
WAN_RATE=${WAN_RATE:-50mbit}; WAN_DELAY=${WAN_DELAY:-20ms}; WAN_LOSS=${WAN_LOSS:-1%}
read -r -a STEPS <<< "${STEPS:-webrtc tcp sendme lab-cone lab-sym lab-sym-udp}"
RES=${OUT:-$W/results-webrtc-$(date -u +%Y%m%dT%H%M%SZ)}; mkdir -p "$RES"; RES=$(cd "$RES" && pwd)
export RES
LOGS=$RES/logs; mkdir -p "$LOGS"
versions "REPS=$N SIZE_MIB=$SIZE WAN_MIB=$WAN_MIB WAN_REPS=$WAN_REPS WORKDIR=$W bench/run_webrtc.sh" > "$RES/versions.txt"
echo "skiff-signal $SIGBIN built $(date -u -r "$SIGBIN" '+%F %H:%M UTC')" >> "$RES/versions.txt"
echo "wan rate $WAN_RATE, one-way delay $WAN_DELAY per router (RTT peer-peer 4x), loss $WAN_LOSS per router and direction" >> "$RES/versions.txt"

# --- the lab (only if a lab step or the shaped run is asked for) ---
NL=$SKIFF_SHARED/netlab/netlab.sh
export NETLAB_PREFIX=${NETLAB_PREFIX:-skb-} NETLAB_RUN=${NETLAB_RUN:-/run/netlab-skb}
LAB=0; [[ " ${STEPS[*]} " == *" lab-"* || $WAN_REPS -gt 0 ]] && LAB=1
NAT=
if [ $LAB = 1 ]; then
  [ "$(id -u)" = 0 ] || { echo "the lab steps need root" >&2; exit 1; }
  trap '"$NL" status > "$LOGS/netlab-status-end.txt" 2>&1 || true; cp "$NETLAB_RUN"/*.log "$LOGS/" 2>/dev/null || true; "$NL" down > /dev/null 2>&1 || true' EXIT
  "$NL" up --turn-auth secret > "$LOGS/netlab-up.txt" 2>&1
  NAT=cone
  cat > "$RES/skiff-signal-lab.toml" <<'EOF'
listen = "203.0.113.10:8080"
[turn]
secret = "netlab-secret"
urls = ["stun:203.0.113.10:3478", "turn:203.0.113.10:3478?transport=udp", "turn:203.0.113.10:3478?transport=tcp"]
EOF
  "$NL" exec srv "$SIGBIN" --config "$RES/skiff-signal-lab.toml" > "$LOGS/lab-signal.log" 2>&1 &
  # a second server that hands out only STUN and TURN over UDP: no RFC 6062 TCP relay fallback,
  # so symmetric <-> symmetric must go through WebRTC's own TURN UDP relay (step lab-sym-udp)
  sed -e 's/:8080"/:8081"/' -e 's/, "turn:203.0.113.10:3478?transport=tcp"//' "$RES/skiff-signal-lab.toml" \
    > "$RES/skiff-signal-lab-udp.toml"
  "$NL" exec srv "$SIGBIN" --config "$RES/skiff-signal-lab-udp.toml" > "$LOGS/lab-signal-udp.log" 2>&1 &
  for _ in $(seq 100); do "$NL" exec peerA curl -fs http://203.0.113.10:8080/healthz > /dev/null 2>&1 && break; sleep 0.1; done
  TURNPID=$(cat "$NETLAB_RUN/turnserver.pid")
  echo "coturn $(turnserver --version 2>/dev/null | head -1 || echo '?') (netlab, use-auth-secret), lab prefix $NETLAB_PREFIX" >> "$RES/versions.txt"
fi
cat "$RES/versions.txt"
nat() { [ "$NAT" = "$1" ] && return 0; "$NL" nat rtrA "$1" > /dev/null; "$NL" nat rtrB "$1" > /dev/null; NAT=$1; }
lab() { # lab VARIANT SIZE RUN-DIR [PORT]
  RES=$3 REPS=1 VARIANT=$1 LAB_SND=peerA LAB_RCV=peerB NETLAB=$NL SIGNAL=ws://203.0.113.10:${4:-8080}/ws \
    RELAY_PID=$TURNPID "$SKIFF_BENCH/bench_skiff_signal.sh" "$2"
}
keep() { mkdir -p "$LOGS/$1"; cp "$2"/*.out "$2"/*.err "$2"/*.time "$LOGS/$1/" 2>/dev/null || true; }
step() { # step NAME RUN
  local p=$RES/parts/$2-$1 rc=0; mkdir -p "$p"
  echo "== rep $2/$N: $1 (load1 $(load1))"
  case $1 in
    webrtc|tcp) RES=$p REPS=1 VARIANT=$1 "$SKIFF_BENCH/bench_skiff_signal.sh" "$SIZE" || rc=$?
                keep "$1-$SIZE-$2" "$W/run/skiff-signal/$1-$SIZE-1" ;;
    sendme) RES=$p REPS=1 "$PEERS/bench_sendme.sh" "$SIZE" || rc=$?
            keep "sendme-$SIZE-$2" "$W/run/sendme/disabled-$SIZE-1" ;;
    lab-cone) nat cone; lab lab-cone "$SIZE" "$p" || rc=$?; keep "lab-cone-$SIZE-$2" "$W/run/skiff-signal/lab-cone-$SIZE-1" ;;
    lab-sym) nat symmetric; lab lab-sym "$SIZE" "$p" || rc=$?; keep "lab-sym-$SIZE-$2" "$W/run/skiff-signal/lab-sym-$SIZE-1" ;;
    lab-sym-udp) nat symmetric; lab lab-sym-udp "$SIZE" "$p" 8081 || rc=$?
                 keep "lab-sym-udp-$SIZE-$2" "$W/run/skiff-signal/lab-sym-udp-$SIZE-1" ;;
  esac
  [ $rc = 0 ] || echo "!! step $1 (rep $2) failed with exit $rc" | tee -a "$RES/errors.txt" >&2
  merge "$p" transfers "$2"; merge "$p" connect "$2"
}

mkfile "rand${SIZE}m.bin" "$SIZE" > /dev/null   # create the test file before the first timed step
for r in $(seq 1 "$N"); do
  k=$(( (r - 1) % ${#STEPS[@]} ))
  for s in "${STEPS[@]:k}" "${STEPS[@]:0:k}"; do step "$s" "$r"; done
done

if [ "$WAN_REPS" -gt 0 ]; then
  mkfile "rand${WAN_MIB}m.bin" "$WAN_MIB" > /dev/null
  nat cone
  for h in rtrA rtrB; do "$NL" shape $h --rate "$WAN_RATE" --delay "$WAN_DELAY" --loss "$WAN_LOSS" > /dev/null; done
  "$NL" status > "$LOGS/netlab-status-wan.txt" 2>&1 || true
  for r in $(seq 1 "$WAN_REPS"); do
    p=$RES/parts/$r-lab-wan; mkdir -p "$p"
    echo "== wan rep $r/$WAN_REPS: lab-wan $WAN_MIB MiB (load1 $(load1))"
    TIMEOUT_S=${WAN_TIMEOUT_S:-600} lab lab-wan "$WAN_MIB" "$p" || echo "!! lab-wan rep $r failed" | tee -a "$RES/errors.txt" >&2
    keep "lab-wan-$WAN_MIB-$r" "$W/run/skiff-signal/lab-wan-$WAN_MIB-1"
    merge "$p" transfers "$r"; merge "$p" connect "$r"
  done
  # link check in the same shaping: TCP (kernel cubic) peerA -> srv crosses rtrA only, so it sees
  # half the RTT and one router's loss; a sanity check of the shaper, not a peer-to-peer baseline
  "$NL" exec srv python3 "$SKIFF_SHARED/netlab/holepunch.py" tput-server --bind 203.0.113.10 --port 9000 --timeout 120 \
    > "$LOGS/wan-tput-server.txt" 2>&1 & TPS=$!
  sleep 0.5
  timeout 120 "$NL" exec peerA python3 "$SKIFF_SHARED/netlab/holepunch.py" tput 203.0.113.10:9000 --bytes $(( WAN_MIB * 1048576 / 4 )) \
    > "$LOGS/wan-tput.txt" 2>&1 || true
  stop $TPS; wait $TPS 2>/dev/null || true
  echo "wan-tcp-check peerA->srv (rtrA only): $(cat "$LOGS/wan-tput.txt")" >> "$RES/versions.txt"
  if [ "${WAN_DIAG:-1}" = 1 ]; then   # one run without loss: is it the loss or the RTT?
    for h in rtrA rtrB; do "$NL" shape $h --rate "$WAN_RATE" --delay "$WAN_DELAY" > /dev/null; done
    p=$RES/parts/1-lab-wan-noloss; mkdir -p "$p"
    echo "== wan diag: lab-wan-noloss $WAN_MIB MiB, no loss (load1 $(load1))"
    TIMEOUT_S=${WAN_TIMEOUT_S:-600} lab lab-wan-noloss "$WAN_MIB" "$p" || echo "!! lab-wan-noloss failed" | tee -a "$RES/errors.txt" >&2
    keep "lab-wan-noloss-$WAN_MIB-1" "$W/run/skiff-signal/lab-wan-noloss-$WAN_MIB-1"
    merge "$p" transfers 1; merge "$p" connect 1
  fi
  for h in rtrA rtrB; do "$NL" shape $h off > /dev/null; done
fi
# coturn's log says which sessions were relayed and how many bytes: copy it for the report
[ $LAB = 1 ] && { cp "$NETLAB_RUN"/*.log "$LOGS/" 2>/dev/null || true; }
echo "load1/5/15 at end $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RES/versions.txt"
python3 "$SKIFF_BENCH/report_webrtc.py" "$RES" "$SIZE" "$WAN_MIB" "$WAN_RATE" | tee "$RES/report.md"
echo "results: $RES (report.md, transfers.csv, connect.csv, logs/)"
