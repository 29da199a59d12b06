#!/usr/bin/env bash
# netlab.sh - a NAT traversal lab on one Linux box, built from network namespaces.
#
# Vendored from the shared lab (../shared/netlab/netlab.sh, checked on Debian 12, kernel
# 6.18, coturn 4.6.1) for Skiff's NAT lab tests (crates/cli/tests/netlab/, README.md here).
# Changes from the original:
#   - NETLAB_TURN_SECRET sets coturn's static-auth-secret for --turn-auth secret (the
#     tests pick a random one per lab and give the same one to skiff-signal);
#   - coturn keeps TCP relay allocations (RFC 6062) on (no `no-tcp-relay`, documented),
#     TLS 1.0/1.1 are off, and its certificate also names IP 203.0.113.10 (so a client
#     that trusts $NETLAB_RUN/turn.crt can verify turns:203.0.113.10:5349);
#   - `netlab.sh relay-bytes` prints the bytes srv's interface has received and sent
#     (used to tell a relayed transfer from a direct one);
#   - holepunch.py, punch.sh and validate.sh are not vendored (shape --delay without netem
#     needs netdelay.py only).
# The tests run every lab under its own NETLAB_PREFIX and NETLAB_RUN, so several labs
# (concurrent test runs, leftovers of a crashed run) never share a namespace.
#
#   netlab.sh up [--nat MODE] [--nat-a MODE] [--nat-b MODE] [--block-udp a|b|both]
#                [--turn-auth static|secret]
#   netlab.sh down                      tear everything down (always safe to run)
#   netlab.sh exec HOST [CMD...]        run CMD (default: a shell) inside HOST
#   netlab.sh status                    show hosts, NAT modes, shaping, coturn
#   netlab.sh relay-bytes               srv's interface counters: "RX_BYTES TX_BYTES"
#   netlab.sh nat rtrA|rtrB MODE        switch a router's NAT type in place
#   netlab.sh udp rtrA|rtrB block|allow block/allow UDP from a router's LAN
#   netlab.sh shape rtrA|rtrB [--rate R] [--delay D] [--loss L]
#                                       emulate a WAN link on a router's uplink,
#                                       both directions (e.g. --rate 50mbit
#                                       --delay 40ms --loss 1%); replaces any
#                                       earlier shaping of that router
#   netlab.sh shape rtrA|rtrB off       remove it;  shape rtrA|rtrB: show it
#
#   MODE: cone      MASQUERADE, source port kept when free (endpoint-independent
#                   mapping in practice; filtering is address+port dependent)
#         symmetric MASQUERADE --random-fully (new random port per 5-tuple)
#   --nat sets both routers; --nat-a / --nat-b override one. --nat-b alone
#   leaves rtrA at cone. UDP blocking forces TURN over TCP/TLS.
#   shape: R is a tc rate (bit|kbit|mbit|gbit), D a one-way delay added in
#   EACH direction (so RTT through that router grows by 2*D), L a loss
#   percentage applied in each direction. Uses tc netem when the kernel has
#   it, else tc tbf + iptables statistic + netdelay.py (NFQUEUE). Force one
#   with NETLAB_SHAPER=netem|nfq.
#
# HOST: inet srv rtrA rtrB peerA peerA2 peerB. Namespaces are named
# ${NETLAB_PREFIX:-nl-}HOST; runtime files (coturn conf/pid/log, state) live in
# ${NETLAB_RUN:-/run/netlab}. Needs root, iproute2, iptables, coturn; conntrack
# and openssl are optional (conntrack flush on mode switch, TURN over TLS);
# python3 is needed for holepunch.py and for shape --delay without netem.
#
# Topology (addresses exist only inside the lab namespaces):
#
#   peerA  10.0.1.10 --+                              +-- peerB 10.0.2.10
#   peerA2 10.0.1.11 --+-- br-lan 10.0.1.1            +-- br-lan 10.0.2.1
#                          [rtrA] NAT+firewall            [rtrB] NAT+firewall
#                          wan 198.51.100.2               wan 192.0.2.2
#                               |                              |
#                          198.51.100.1 ---[ inet ]--- 192.0.2.1
#                                       203.0.113.1    plain router, no NAT,
#                                            |         drops 10/8 sources
#                          [srv] 203.0.113.10 (+ .11 for RFC 5780 tests)
#                                coturn 3478 udp/tcp, 5349 tls
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)   # sibling scripts live here
P=${NETLAB_PREFIX:-nl-}
RUN=${NETLAB_RUN:-/run/netlab}
HOSTS=(inet srv rtrA rtrB peerA peerA2 peerB)

SRV_IP=203.0.113.10 SRV_IP2=203.0.113.11
declare -A WAN=([rtrA]=198.51.100.2 [rtrB]=192.0.2.2)
declare -A GW=([rtrA]=198.51.100.1 [rtrB]=192.0.2.1 [srv]=203.0.113.1)
declare -A LAN=([rtrA]=10.0.1 [rtrB]=10.0.2)
declare -A PEER_IP=([peerA]=10.0.1.10 [peerA2]=10.0.1.11 [peerB]=10.0.2.10)
declare -A PEER_RTR=([peerA]=rtrA [peerA2]=rtrA [peerB]=rtrB)

TURN_REALM=netlab.test TURN_USER=netlab TURN_PASS=netlab
TURN_SECRET=${NETLAB_TURN_SECRET:-netlab-secret}

log() { printf '[netlab] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
ns_exists() { [[ -e /run/netns/$1 ]]; }
alive() { local st; st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) && [[ ${st:0:1} != Z ]]; }  # zombies count as gone
nsx() { local h=$1; shift; ip netns exec "$P$h" "$@"; }

need() {
  [[ $EUID -eq 0 ]] || die "must run as root"
  local c
  for c in ip iptables-restore turnserver; do
    command -v "$c" >/dev/null || die "missing '$c' (apt-get install -y iproute2 iptables coturn)"
  done
}

state_get() { sed -n "s/^$1=//p" "$RUN/state" 2>/dev/null; }
state_set() {
  touch "$RUN/state"
  sed -i "/^$1=/d" "$RUN/state"
  echo "$1=$2" >>"$RUN/state"
}

# ---- routers ---------------------------------------------------------------
# Home-router firewall + NAT, applied atomically with iptables-restore.
# filter: WAN may not open anything (INPUT/FORWARD drop NEW from wan); this also
# keeps unsolicited packets from creating conntrack entries on the router,
# which would otherwise steal a port and break hole punching (see README.md).
apply_router() {
  local r=$1 mode udp masq udprule=""
  mode=$(state_get "NAT_$r"); udp=$(state_get "UDP_$r")
  [[ $udp == block ]] && udprule="-A FORWARD -i br-lan -o wan -p udp -j DROP"
  case $mode in
    cone) masq="-j MASQUERADE" ;;
    symmetric) masq="-j MASQUERADE --random-fully" ;;
    *) die "unknown NAT mode '$mode' (cone|symmetric)" ;;
  esac
  nsx "$r" iptables-restore <<EOF
*filter
:INPUT DROP [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A INPUT -i br-lan -j ACCEPT
$udprule
-A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
-A FORWARD -i br-lan -o wan -j ACCEPT
-A FORWARD -i br-lan -o br-lan -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A POSTROUTING -o wan $masq
COMMIT
EOF
  # Old mappings would survive a mode switch; drop them.
  if command -v conntrack >/dev/null; then nsx "$r" conntrack -F >/dev/null 2>&1 || true; fi
}

# ---- coturn ----------------------------------------------------------------
start_coturn() {
  local auth=$1 conf=$RUN/turnserver.conf tls="no-tls
no-dtls"
  if command -v openssl >/dev/null; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
      -days 7 -subj "/CN=turn.$TURN_REALM" -addext "subjectAltName=DNS:turn.$TURN_REALM,IP:$SRV_IP" \
      -keyout "$RUN/turn.key" \
      -out "$RUN/turn.crt" >/dev/null 2>&1 &&
      tls="cert=$RUN/turn.crt
pkey=$RUN/turn.key"
  fi
  local cred="lt-cred-mech
user=$TURN_USER:$TURN_PASS"
  [[ $auth == secret ]] && cred="use-auth-secret
static-auth-secret=$TURN_SECRET"
  cat >"$conf" <<EOF
# generated by netlab.sh ($auth auth)
listening-ip=$SRV_IP
listening-ip=$SRV_IP2
relay-ip=$SRV_IP
listening-port=3478
tls-listening-port=5349
realm=$TURN_REALM
fingerprint
$cred
$tls
# TCP relay allocations (RFC 6062) stay allowed (no no-tcp-relay): TURN over TCP/TLS
# is what a peer behind a UDP-blocking firewall falls back to.
no-tlsv1
no-tlsv1_1
min-port=49152
max-port=65535
relay-threads=1
no-cli
no-multicast-peers
verbose
userdb=$RUN/turndb
pidfile=$RUN/turnserver.coturn.pid
log-file=$RUN/turnserver.log
simple-log
no-stdout-log
EOF
  # ip netns exec execs turnserver, so $! is coturn's own PID.
  # (9<&- : coturn must not inherit the flock fd, or it would hold the lock)
  ip netns exec "${P}srv" turnserver -c "$conf" </dev/null >>"$RUN/turnserver.out" 2>&1 9<&- &
  echo $! >"$RUN/turnserver.pid"
  local i
  for i in $(seq 50); do
    nsx srv ss -Hlun "sport = :3478" | grep -q . && nsx srv ss -Hltn "sport = :3478" | grep -q . && return 0
    alive "$(<"$RUN/turnserver.pid")" || break
    sleep 0.1
  done
  tail -n 20 "$RUN/turnserver.log" "$RUN/turnserver.out" >&2 2>/dev/null || true
  die "coturn did not start"
}

# ---- up / down -------------------------------------------------------------
do_up() {
  local nat_a=cone nat_b=cone udp_a=allow udp_b=allow auth=static
  while (($#)); do
    [[ $1 == --* && -n ${2:-} ]] || die "option '$1' needs a value (see: netlab.sh help)"
    case $1 in
      --nat) nat_a=$2 nat_b=$2; shift 2 ;;
      --nat-a) nat_a=$2; shift 2 ;;
      --nat-b) nat_b=$2; shift 2 ;;
      --block-udp) case $2 in a) udp_a=block ;; b) udp_b=block ;; both) udp_a=block udp_b=block ;;
                     *) die "--block-udp a|b|both" ;; esac; shift 2 ;;
      --turn-auth) auth=$2; [[ $auth == static || $auth == secret ]] || die "--turn-auth static|secret"; shift 2 ;;
      *) die "unknown option '$1'" ;;
    esac
  done
  [[ $nat_a =~ ^(cone|symmetric)$ && $nat_b =~ ^(cone|symmetric)$ ]] || die "NAT mode must be cone or symmetric"
  do_down quiet                      # idempotent: always start from nothing
  # any failure (set -e or die) below tears the half-built lab down again
  trap 'log "up failed, cleaning up"; do_down quiet' EXIT
  mkdir -p "$RUN"
  printf 'NAT_rtrA=%s\nNAT_rtrB=%s\nUDP_rtrA=%s\nUDP_rtrB=%s\nTURN_AUTH=%s\n' \
    "$nat_a" "$nat_b" "$udp_a" "$udp_b" "$auth" >"$RUN/state"

  local h r p
  for h in "${HOSTS[@]}"; do
    ip netns add "$P$h"
    # routers and inet forward; IPv4 only (no link-local v6 ICE candidates)
    nsx "$h" sysctl -q -w net.ipv4.ip_forward="$([[ $h == rtr* || $h == inet ]] && echo 1 || echo 0)"
    nsx "$h" sysctl -q -w net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1 2>/dev/null || true
    ip -n "$P$h" link set lo up
  done

  # inet <-> srv
  ip -n "${P}inet" link add to-srv type veth peer name eth0 netns "${P}srv"
  ip -n "${P}inet" addr add "${GW[srv]}/24" dev to-srv
  ip -n "${P}srv" addr add "$SRV_IP/24" dev eth0
  ip -n "${P}srv" addr add "$SRV_IP2/24" dev eth0
  ip -n "${P}inet" link set to-srv up
  ip -n "${P}srv" link set eth0 up
  ip -n "${P}srv" route add default via "${GW[srv]}"

  # inet <-> routers, router LAN bridges
  for r in rtrA rtrB; do
    ip -n "${P}inet" link add "to-$r" type veth peer name wan netns "$P$r"
    ip -n "${P}inet" addr add "${GW[$r]}/24" dev "to-$r"
    ip -n "${P}inet" link set "to-$r" up
    ip -n "$P$r" addr add "${WAN[$r]}/24" dev wan
    ip -n "$P$r" link set wan up
    ip -n "$P$r" route add default via "${GW[$r]}"
    ip -n "$P$r" link add br-lan type bridge
    ip -n "$P$r" addr add "${LAN[$r]}.1/24" dev br-lan
    ip -n "$P$r" link set br-lan up
    # bridged LAN frames must not traverse the router's iptables
    nsx "$r" sysctl -q -w net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true
    apply_router "$r"
  done

  # peers on the router LANs
  for p in peerA peerA2 peerB; do
    r=${PEER_RTR[$p]}
    ip -n "$P$r" link add "lan-$p" type veth peer name eth0 netns "$P$p"
    ip -n "$P$r" link set "lan-$p" master br-lan up
    ip -n "$P$p" addr add "${PEER_IP[$p]}/24" dev eth0
    ip -n "$P$p" link set eth0 up
    ip -n "$P$p" route add default via "${LAN[$r]}.1"
  done

  # inet: plain router; a private source here means a NAT leaked (counted, dropped)
  nsx inet iptables-restore <<EOF
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
-A FORWARD -s 10.0.0.0/8 -j DROP
COMMIT
EOF

  start_coturn "$auth"
  trap - EXIT
  log "up: rtrA=$nat_a/udp-$udp_a rtrB=$nat_b/udp-$udp_b turn-auth=$auth coturn pid $(<"$RUN/turnserver.pid")"
}

do_down() {
  local quiet=${1:-} h pid pids=() left
  # coturn by its recorded PID (checked to really be our turnserver)
  if [[ -f $RUN/turnserver.pid ]]; then
    pid=$(<"$RUN/turnserver.pid")
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "turnserver -c $RUN/turnserver.conf"; then
      pids+=("$pid")
    fi
  fi
  # anything else still running inside a lab namespace (test clients, servers)
  for h in "${HOSTS[@]}"; do
    ns_exists "$P$h" || continue
    pids+=($(ip netns pids "$P$h" 2>/dev/null))
  done
  if ((${#pids[@]})); then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 30); do
      left=(); for pid in "${pids[@]}"; do alive "$pid" && left+=("$pid"); done
      ((${#left[@]})) || break; sleep 0.1
    done
    ((${#left[@]})) && kill -KILL "${left[@]}" 2>/dev/null || true
  fi
  # deleting a namespace deletes its veths and bridges
  for h in "${HOSTS[@]}"; do
    if ns_exists "$P$h"; then ip netns del "$P$h" || log "could not delete $P$h"; fi
  done
  rm -rf "$RUN"
  [[ $quiet == quiet ]] || log "down: done"
}

do_status() {
  local h r
  if ! ns_exists "${P}srv"; then echo "netlab: down"; return 0; fi
  echo "== state"; cat "$RUN/state" 2>/dev/null
  local pid; pid=$(cat "$RUN/turnserver.pid" 2>/dev/null || echo -)
  if kill -0 "$pid" 2>/dev/null; then echo "coturn: running, pid $pid"; else echo "coturn: NOT running"; fi
  echo "== namespaces"; ip netns list | grep "^$P" || true
  echo "== addresses"
  for h in "${HOSTS[@]}"; do
    ns_exists "$P$h" || { echo "$h: missing"; continue; }
    printf '%-7s %s\n' "$h" "$(ip -n "$P$h" -4 -o addr show | awk '$2!="lo"{printf "%s=%s ", $2, $4}')"
  done
  for r in rtrA rtrB; do
    echo "== $r nat/filter (packets)"
    nsx "$r" iptables -t nat -S POSTROUTING | grep -- '-A' || true
    nsx "$r" iptables -S FORWARD | grep -- '-p udp' || true
    if command -v conntrack >/dev/null; then echo "conntrack entries: $(nsx "$r" conntrack -C 2>/dev/null)"; fi
    echo "shaping: $(state_get "SHAPE_$r" | sed 's/^$/off/')"
  done
  echo "== inet: leaked private-source packets dropped: $(nsx inet iptables -vnxL FORWARD | awk '$8 ~ /^10\./{print $1}')"
  echo "== srv listeners"; nsx srv ss -Hlntu | awk '{print $1, $5}' | sort -u
}

# ---- WAN shaping -----------------------------------------------------------
# A router's WAN link is the veth pair rtrX:wan <-> inet:to-rtrX. Upload is
# shaped on rtrX's wan egress, download on inet's to-rtrX egress. netem does
# delay, loss and rate in one qdisc on each end. Without netem: tbf on each end
# for the rate, and in inet's mangle table (no conntrack, no NAT there) a
# random DROP for loss plus an NFQUEUE held by netdelay.py for delay. Traffic
# from the router is caught in PREROUTING, traffic to it in POSTROUTING, so a
# packet from rtrA to rtrB picks up both routers' shaping.
SHAPE_Q_BASE=${NETLAB_SHAPE_QUEUE:-4100}
declare -A SHAPE_Q=([rtrA]=$((SHAPE_Q_BASE + 1)) [rtrB]=$((SHAPE_Q_BASE + 2)))

netem_ok() { nsx inet tc qdisc add dev lo root netem delay 1ms 2>/dev/null && nsx inet tc qdisc del dev lo root 2>/dev/null; }
rate_bps() {  # 50mbit -> 50000000 (tc units are powers of 1000)
  local n=${1%%[a-z]*} u=${1##*[0-9.]}
  awk -v n="$n" -v u="$u" 'BEGIN{m=(u=="kbit")?1e3:(u=="mbit")?1e6:(u=="gbit")?1e9:1; printf "%d", n*m}'
}
delay_ms() {  # 40ms / 0.2s / 500us / 40 -> milliseconds
  local n=${1%%[a-z]*} u=${1##*[0-9.]}
  awk -v n="$n" -v u="$u" 'BEGIN{m=(u=="s")?1000:(u=="us")?0.001:1; printf "%g", n*m}'
}

shape_off() {  # ROUTER: remove every trace of shaping; safe when none
  local r=$1 line pid pf=$RUN/netdelay-$1.pid
  local -a rule
  while read -r line; do
    [[ -n $line ]] || continue
    read -ra rule <<<"$line"; rule[0]=-D
    nsx inet iptables -t mangle "${rule[@]}" || true
  done < <(nsx inet iptables -t mangle -S 2>/dev/null | grep -- "--comment netlab-shape-$r " || true)
  nsx "$r" tc qdisc del dev wan root 2>/dev/null || true
  nsx inet tc qdisc del dev "to-$r" root 2>/dev/null || true
  if [[ -f $pf ]]; then  # rules are gone, so nothing new is queued; it releases what it holds
    pid=$(<"$pf")
    if [[ -r /proc/$pid/cmdline ]] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q "netdelay.py --queue ${SHAPE_Q[$r]} "; then
      kill -TERM "$pid" 2>/dev/null || true
      for _ in $(seq 30); do alive "$pid" || break; sleep 0.1; done
      alive "$pid" && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pf"
  fi
  state_set "SHAPE_$r" off
}

do_shape() {
  local r=${1:-} rate="" delay="" loss="" how=${NETLAB_SHAPER:-auto}
  [[ $r == rtrA || $r == rtrB ]] || die "router must be rtrA or rtrB"
  ns_exists "$P$r" || die "lab is down"
  shift
  if (($# == 0)); then echo "$r: $(state_get "SHAPE_$r" | sed 's/^$/off/')"; return 0; fi
  if [[ $1 == off ]]; then shape_off "$r"; log "$r: shaping off"; return 0; fi
  while (($#)); do
    [[ $1 == --* && -n ${2:-} ]] || die "shape: option '$1' needs a value (--rate R --delay D --loss L)"
    case $1 in
      --rate) rate=${2,,}; [[ $rate =~ ^[0-9]+(\.[0-9]+)?(bit|kbit|mbit|gbit)$ ]] || die "--rate like 50mbit, 512kbit, 1gbit"; shift 2 ;;
      --delay) delay=${2,,}; [[ $delay =~ ^[0-9]+(\.[0-9]+)?(us|ms|s)?$ ]] || die "--delay like 40ms"; shift 2 ;;
      --loss) loss=${2%\%}; [[ $loss =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v l="$loss" 'BEGIN{exit !(l <= 100)}' || die "--loss like 1% (0-100)"; shift 2 ;;
      *) die "shape: unknown option '$1'" ;;
    esac
  done
  [[ -n $rate$delay$loss ]] || die "shape: give --rate, --delay and/or --loss"
  [[ -z $delay || $delay =~ [a-z]$ ]] || delay=${delay}ms
  case $how in
    auto) if netem_ok; then how=netem; else how=nfq; fi ;;
    netem) netem_ok || die "tc netem is not available in this kernel (sch_netem); try NETLAB_SHAPER=nfq" ;;
    nfq) ;;
    *) die "NETLAB_SHAPER must be netem or nfq" ;;
  esac
  shape_off "$r"
  if [[ $how == netem ]]; then
    local -a args=()
    [[ -n $delay ]] && args+=(delay "$delay")
    [[ -n $loss ]] && args+=(loss "$loss%")
    [[ -n $rate ]] && args+=(rate "$rate")
    nsx "$r" tc qdisc replace dev wan root netem "${args[@]}" limit 10000
    nsx inet tc qdisc replace dev "to-$r" root netem "${args[@]}" limit 10000
  else
    if [[ -n $rate ]]; then
      local burst; burst=$(awk -v b="$(rate_bps "$rate")" 'BEGIN{x=b/8/100; printf "%d", (x < 15140) ? 15140 : x}')
      nsx "$r" tc qdisc replace dev wan root tbf rate "$rate" burst "$burst" latency 100ms
      nsx inet tc qdisc replace dev "to-$r" root tbf rate "$rate" burst "$burst" latency 100ms
    fi
    local q=${SHAPE_Q[$r]} chain dir
    if [[ -n $delay ]]; then
      command -v python3 >/dev/null || die "shape --delay without netem needs python3"
      rm -f "$RUN/netdelay-$r.pid"
      # 9<&- : the daemon must not inherit the flock fd
      ip netns exec "${P}inet" python3 "$HERE/netdelay.py" --queue "$q" --delay "$(delay_ms "$delay")" \
        --pidfile "$RUN/netdelay-$r.pid" </dev/null >>"$RUN/netdelay-$r.log" 2>&1 9<&- &
      for _ in $(seq 50); do [[ -s $RUN/netdelay-$r.pid ]] && break; sleep 0.1; done
      [[ -s $RUN/netdelay-$r.pid ]] || { tail -n 5 "$RUN/netdelay-$r.log" >&2; shape_off "$r"; die "netdelay.py did not start"; }
    fi
    for chain in PREROUTING POSTROUTING; do
      [[ $chain == PREROUTING ]] && dir=(-i "to-$r") || dir=(-o "to-$r")
      if [[ -n $loss ]]; then
        nsx inet iptables -t mangle -A "$chain" "${dir[@]}" -m comment --comment "netlab-shape-$r" \
          -m statistic --mode random --probability "$(awk -v l="$loss" 'BEGIN{printf "%.6f", l/100}')" -j DROP
      fi
      if [[ -n $delay ]]; then
        nsx inet iptables -t mangle -A "$chain" "${dir[@]}" -m comment --comment "netlab-shape-$r" -j NFQUEUE --queue-num "$q"
      fi
    done
  fi
  state_set "SHAPE_$r" "rate=${rate:-none} delay=${delay:-0ms} loss=${loss:-0}% via=$how"
  log "$r: shaping $(state_get "SHAPE_$r") (each direction)"
}

set_router() {  # nat|udp ROUTER VALUE
  local what=$1 r=${2:-} v=${3:-}
  [[ $r == rtrA || $r == rtrB ]] || die "router must be rtrA or rtrB"
  ns_exists "$P$r" || die "lab is down"
  case $what:$v in
    nat:cone | nat:symmetric) state_set "NAT_$r" "$v" ;;
    udp:block | udp:allow) state_set "UDP_$r" "$v" ;;
    *) die "bad value '$v'" ;;
  esac
  apply_router "$r"
  log "$r: nat=$(state_get "NAT_$r") udp=$(state_get "UDP_$r")"
}

cmd=${1:-}; shift || true
case $cmd in
  up | down | nat | udp | shape)
    need
    exec 9<"$0"; flock -w 60 9 || die "another netlab.sh is running"  # serialise
    case $cmd in
      up) do_up "$@" ;;
      down) do_down ;;
      shape) do_shape "$@" ;;
      *) set_router "$cmd" "$@" ;;
    esac ;;
  exec)
    h=${1:-}; shift || true
    h=${h#"$P"}
    ns_exists "$P$h" || die "no lab host '$h' (hosts: ${HOSTS[*]}; is the lab up?)"
    (($#)) || set -- "${SHELL:-/bin/bash}"
    exec ip netns exec "$P$h" "$@" ;;
  status) do_status ;;
  relay-bytes)
    ns_exists "${P}srv" || die "lab is down"
    nsx srv cat /sys/class/net/eth0/statistics/rx_bytes /sys/class/net/eth0/statistics/tx_bytes | paste -sd' ' ;;
  *) sed -n '2,50p' "$0"; exit 2 ;;
esac
