# Sourced by bench/*.sh. Finds the shared peer-benchmark lib (../../shared/bench/peers/lib.sh
# relative to this folder, or $SKIFF_SHARED/bench/peers/lib.sh) and the skiff binary.
#   SKIFF_SHARED  the shared folder (the one that holds bench/peers/); overrides the relative path
#   SKIFF         skiff binary (default: /work/target-bench/release/skiff, else skiff on PATH)
SKIFF_BENCH=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ -n "${SKIFF_SHARED:-}" ]; then
  PEERS=$SKIFF_SHARED/bench/peers; [ -f "$PEERS/lib.sh" ] || PEERS=$SKIFF_SHARED
else
  PEERS=$SKIFF_BENCH/../../shared/bench/peers
fi
[ -f "$PEERS/lib.sh" ] || { echo "shared bench lib not found at $PEERS/lib.sh; set SKIFF_SHARED=/path/to/shared" >&2; exit 1; }
PEERS=$(cd "$PEERS" && pwd); export SKIFF_SHARED=${SKIFF_SHARED:-$(cd "$PEERS/../.." && pwd)}
# shellcheck source=/dev/null
source "$PEERS/lib.sh"
if [ -z "${SKIFF:-}" ]; then
  SKIFF=/work/target-bench/release/skiff; [ -x "$SKIFF" ] || SKIFF=$(command -v skiff || echo "$SKIFF")
fi
export SKIFF
# json_get FILE EVENT KEY -> KEY of the first JSON line on FILE whose "event" is EVENT (lines may
# carry a leading "<epoch> " timestamp, see stamp)
json_get() {
  python3 - "$@" <<'PY'
import json, sys
f, ev, key = sys.argv[1:4]
for line in open(f, errors="replace"):
    line = line.strip()
    if not line.startswith("{"):
        line = line.split(" ", 1)[-1]
    try:
        o = json.loads(line)
    except ValueError:
        continue
    if isinstance(o, dict) and o.get("event") == ev:
        v = o.get(key)
        print(json.dumps(v) if isinstance(v, (list, dict)) else v)
        break
PY
}
# stamp: prefix every line of stdin with the arrival time (bash $EPOCHREALTIME) and a space
stamp() { local l; while IFS= read -r l; do printf '%s %s\n' "$EPOCHREALTIME" "$l"; done; }
# stop PID: TERM, then KILL after 5 s
stop() {
  kill -TERM "$1" 2>/dev/null || return 0
  for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -KILL "$1" 2>/dev/null || true
}
# udp_drops [CMD-PREFIX...] -> Udp RcvbufErrors of the network namespace the prefix runs in
udp_drops() {
  "$@" awk '/^Udp:/ { if (!h) { for (i = 1; i <= NF; i++) if ($i == "RcvbufErrors") c = i; h = 1 } else print $c }' /proc/net/snmp
}
# versions DEFAULT_COMMAND -> the versions.txt header of a run: date, command ($RUN_CMD or the
# default given), skiff build, peer tool versions, machine and load
versions() {
  echo "date $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
  echo "command ${RUN_CMD:-$1}"
  echo "skiff $("$SKIFF" --version 2>/dev/null | awk '{print $NF}' | grep . || echo '?') ($SKIFF built $(date -u -r "$SKIFF" '+%F %H:%M UTC'), sha256 $(sha256sum < "$SKIFF" | cut -c1-12); repo HEAD $(git -C "$SKIFF_BENCH" rev-parse --short HEAD 2>/dev/null || echo none)$(git -C "$SKIFF_BENCH/.." status --porcelain -- crates Cargo.toml Cargo.lock 2>/dev/null | grep -q . && echo ', crates/ has uncommitted changes' || true))"
  echo "magic-wormhole $("$WH/wormhole" --version | awk '{print $2}') (mailbox-server $("$WH/pip" show magic-wormhole-mailbox-server | awk '/^Version/{print $2}'), transit-relay $("$WH/pip" show magic-wormhole-transit-relay | awk '/^Version/{print $2}'))"
  echo "sendme $("$SENDME" --version 2>/dev/null | awk '{print $2}' | grep . || echo '?')"
  echo "iperf3 $(iperf3 --version 2>/dev/null | awk 'NR==1{print $2}')"
  echo "machine $(nproc) cpus ($(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, kernel $(uname -r), workdir fs $(stat -f -c %T "$W") ($(df -Ph "$W" | awk 'NR==2{print $4}') free), load1/5/15 at start $(cut -d' ' -f1-3 /proc/loadavg)"
}
# merge PART KIND RUN: append the rows of one REPS=1 step to $RES/KIND.csv with the run number set
merge() {
  local src=$1/$2.csv dst=$RES/$2.csv col=4; [ "$2" = limits ] && col=2
  [ -f "$src" ] || return 0
  [ -f "$dst" ] || head -1 "$src" > "$dst"
  awk -F, -v OFS=, -v c=$col -v r="$3" 'NR > 1 { $c = r; print }' "$src" >> "$dst"
}
