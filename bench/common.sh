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
