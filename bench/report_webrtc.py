#!/usr/bin/env python3
"""Markdown report of a bench/run_webrtc.sh result folder (issue 5): one row per case with the
path each side reported, MB/s verified on disk, CPU-s/GiB of both sides, peak RSS, connect times;
then every issue-5 target with met / MISSED.

usage: report_webrtc.py RES [SIZE_MIB=1024] [WAN_MIB=128] [WAN_RATE=50mbit]

Only runs whose output verified (match == ok) give numbers. MB/s is 1e6 B/s; "e2e" runs from
starting the sender to the receiver's exit; "data" is the receiver's progress events, first to
last (the steady rate without setup, fsync and final verification). CPU-s/GiB is sender +
receiver (user + sys, /usr/bin/time -v); coturn's CPU (relay) is shown separately.
"""
import csv, os, re, statistics as st, sys

res = sys.argv[1]
SIZE = sys.argv[2] if len(sys.argv) > 2 else "1024"
WAN = sys.argv[3] if len(sys.argv) > 3 else "128"
RATE = sys.argv[4] if len(sys.argv) > 4 else "50mbit"
rd = lambda n: list(csv.DictReader(open(os.path.join(res, n)))) if os.path.exists(os.path.join(res, n)) else []
med = lambda xs: st.median(xs) if xs else None
fmt = lambda x, p=0: "-" if x is None else f"{x:.{p}f}"
num = lambda v: None if v in (None, "", "-") else float(v)

T, C = rd("transfers.csv"), rd("connect.csv")
ver = {}
if os.path.exists(os.path.join(res, "versions.txt")):
    for l in open(os.path.join(res, "versions.txt")):
        if l.strip():
            k, _, v = l.strip().partition(" ")
            ver.setdefault(k, v)


def group(tool, variant, size):
    rs = [r for r in T if r["tool"] == tool and r["variant"] == variant and r["size_mib"] == size]
    ok = [r for r in rs if r["match"] == "ok"]
    cs = {r["run"]: r for r in C if r["variant"] == variant and r["size_mib"] == size}
    mib = int(size)
    d = dict(rows=rs, ok=ok, n=len(rs), nok=len(ok), mib=mib)
    d["e2e"] = med([float(r["mbps_e2e"]) for r in ok])
    d["cpu_gib"] = med([(float(r["snd_cpu_s"]) + float(r["rcv_cpu_s"])) * 1024 / mib for r in ok])
    rel = [num(r["relay_cpu_s"]) for r in ok if num(r["relay_cpu_s"]) is not None]
    d["relay_gib"] = med([x * 1024 / mib for x in rel])
    d["snd_cpu"] = med([float(r["snd_cpu_s"]) for r in ok])
    d["rcv_cpu"] = med([float(r["rcv_cpu_s"]) for r in ok])
    d["snd_rss"] = max([float(r["snd_rss_mib"]) for r in ok], default=None)
    d["rcv_rss"] = max([float(r["rcv_rss_mib"]) for r in ok], default=None)
    d["runs"] = " / ".join(r["mbps_e2e"] if r["match"] == "ok" else f"~~{r['mbps_e2e']}~~ {r['match']}" for r in rs)
    d["loads"] = " / ".join(r["load1"] for r in rs)
    okc = [cs[r["run"]] for r in ok if r["run"] in cs]
    d["data"] = med([num(c["data_mbps"]) for c in okc if num(c["data_mbps"]) is not None])
    for k in ("connected_s", "first_byte_s"):
        xs = [num(c[k]) for c in okc if num(c[k]) is not None]
        d[k] = med(xs)
        d[k + "_max"] = max(xs, default=None)
        d[k + "_runs"] = " / ".join(c[k] for c in okc) or "-"
    kind = lambda c: "webrtc" if str(c.get("remote_rcv", "")).startswith("webrtc:") else (
        "TCP" if c.get("remote_rcv") not in (None, "", "-") else "?")
    paths = sorted({f"{c['path_snd']}/{c['path_rcv']} ({kind(c)})" for c in cs.values()})
    d["path"] = ", ".join(paths) or "-"
    d["drops"] = " / ".join(f"{c['udp_drops_snd']}+{c['udp_drops_rcv']}" for c in cs.values()) or "-"
    return d


def size_s(mib):
    mib = int(mib)
    return f"{mib // 1024} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


print(f"## Results in {res}\n")
for k in ("date", "command", "machine", "skiff", "skiff-signal", "sendme", "coturn", "wan", "wan-tcp-check", "load1/5/15"):
    if k in ver:
        print(f"- {k} {ver[k]}")
print()
cases = [("skiff", "webrtc", SIZE, "skiff WebRTC, loopback (`--webrtc-only`)"),
         ("skiff", "tcp", SIZE, "skiff direct TCP, loopback (same server)"),
         ("sendme", "relay-disabled", SIZE, "sendme, QUIC, relays disabled, loopback"),
         ("skiff", "lab-cone", SIZE, "skiff, netlab cone <-> cone"),
         ("skiff", "lab-sym", SIZE, "skiff, netlab symmetric <-> symmetric (TURN UDP + TCP offered)"),
         ("skiff", "lab-sym-udp", SIZE, "skiff, netlab symmetric <-> symmetric (only TURN UDP offered)"),
         ("skiff", "lab-wan", WAN, f"skiff, netlab cone <-> cone, shaped WAN ({RATE})"),
         ("skiff", "lab-wan-noloss", WAN, f"(diagnostic) same shaping without loss")]
G = {}
print("### Cases (median of verified runs; every run listed)\n")
print("| case | size | path snd/rcv | verified | MB/s e2e median (runs) | MB/s data phase | CPU-s/GiB both sides "
      "(snd + rcv) | coturn CPU-s/GiB | peak RSS MiB snd / rcv | connected s (runs) | first byte s median (runs) "
      "| UDP drops snd+rcv | load1 at runs |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for t, v, sz, label in cases:
    g = G[v] = group(t, v, sz)
    if not g["n"]:
        continue
    path = "-" if t == "sendme" else g["path"]
    ct = "-" if t == "sendme" else f"{fmt(g['connected_s'], 2)} ({g['connected_s_runs']})"
    fb = "-" if t == "sendme" else f"**{fmt(g['first_byte_s'], 2)}** ({g['first_byte_s_runs']})"
    print(f"| {label} | {size_s(sz)} | {path} | {g['nok']}/{g['n']} | **{fmt(g['e2e'], 1)}** ({g['runs']}) "
          f"| {fmt(g['data'], 1)} | **{fmt(g['cpu_gib'], 1)}** ({fmt(g['snd_cpu'], 1)} + {fmt(g['rcv_cpu'], 1)}) "
          f"| {fmt(g['relay_gib'], 1)} | {fmt(g['snd_rss'])} / {fmt(g['rcv_rss'])} | {ct} | {fb} "
          f"| {'-' if t == 'sendme' else g['drops']} | {g['loads']} |")
print()

verdict = lambda ok: "-" if ok is None else ("met" if ok else "**MISSED**")
wr, sm = G["webrtc"], G["relay-disabled"]


def paired(a, b):
    o = {r["run"]: float(r["mbps_e2e"]) for r in b["ok"]}
    return " / ".join(f"{float(r['mbps_e2e']) / o[r['run']]:.2f}" for r in a["ok"] if r["run"] in o) or "-"


print("### Targets (issue 5)\n")
print("| target | measured | value | needed | verdict |\n|---|---|---|---|---|")
x = wr["e2e"] / sm["e2e"] if wr["e2e"] and sm["e2e"] else None
print(f"| WebRTC path vs sendme, same run ({size_s(SIZE)}, loopback) | WebRTC {fmt(wr['e2e'], 1)} vs sendme "
      f"{fmt(sm['e2e'], 1)} MB/s (per rep: {paired(wr, sm)}) | {fmt(x, 2)}x | >= 1.0x | {verdict(None if x is None else x >= 1.0)} |")
lc = G["lab-cone"]
x = lc["e2e"] / sm["e2e"] if lc["e2e"] and sm["e2e"] else None
print(f"| (info) lab cone <-> cone vs sendme loopback | {fmt(lc['e2e'], 1)} vs {fmt(sm['e2e'], 1)} MB/s "
      f"(per rep: {paired(lc, sm)}) | {fmt(x, 2)}x | - | - |")
for v, label in (("webrtc", "WebRTC loopback"), ("lab-cone", "lab cone <-> cone"), ("lab-sym", "lab TURN (UDP+TCP offered)"),
                 ("lab-sym-udp", "lab TURN UDP"),
                 ("tcp", "direct TCP loopback"), ("lab-wan", "shaped WAN")):
    g = G[v]
    if g["cpu_gib"] is None:
        continue
    extra = f"; coturn +{fmt(g['relay_gib'], 1)}" if g["relay_gib"] and g["relay_gib"] >= 0.05 else ""
    print(f"| CPU per GiB, both sides, {label} | snd {fmt(g['snd_cpu'], 1)} + rcv {fmt(g['rcv_cpu'], 1)} CPU-s "
          f"per {size_s(g['mib'])}{extra} (sendme {fmt(sm['cpu_gib'], 1)}) | {fmt(g['cpu_gib'], 1)} CPU-s/GiB | <= 12 "
          f"| {verdict(g['cpu_gib'] <= 12)} |")
for v, label, lim in (("lab-cone", "connect, cone <-> cone (direct)", 2.0), ("lab-sym", "connect, TURN (UDP+TCP offered)", 4.0),
                      ("lab-sym-udp", "connect, TURN UDP only", 4.0)):
    g = G[v]
    if g["first_byte_s"] is None:
        continue
    print(f"| {label}: code entered -> first byte | median {fmt(g['first_byte_s'], 2)} s, max "
          f"{fmt(g['first_byte_s_max'], 2)} s (`connected` median {fmt(g['connected_s'], 2)} s); path {g['path']} "
          f"| {fmt(g['first_byte_s'], 2)} s | <= {lim:.0f} s | {verdict(g['first_byte_s_max'] <= lim)} |")
g = G["lab-wan"]
m = re.match(r"([\d.]+)\s*(k|m|g)?bit", RATE.lower())
rate = float(m.group(1)) * {"k": 1e3, "m": 1e6, "g": 1e9, None: 1}[m.group(2)] / 8 / 1e6 if m else None
if g["e2e"] and rate:
    se, sd = g["e2e"] / rate, (g["data"] or 0) / rate
    print(f"| shaped WAN share of the shaped rate ({RATE} = {rate:.2f} MB/s) | e2e {fmt(g['e2e'], 2)} MB/s "
          f"(runs {g['runs']}), data phase {fmt(g['data'], 2)} MB/s; path {g['path']} | {100 * se:.0f} % e2e, "
          f"{100 * sd:.0f} % data phase | >= 80 % | {verdict(se >= 0.8)} |")
print()
# coturn: which sessions relayed data (from its log)
log = os.path.join(res, "logs", "turnserver.log")
if os.path.exists(log):
    sess = [l.strip() for l in open(log, errors="replace") if "usage: realm" in l and "closed" not in l]
    big = [l for l in sess if (lambda m: m and int(m.group(1)) > 1 << 20)(re.search(r"rb=(\d+)", l))]
    print(f"coturn log: {len(sess)} session usage lines, {len(big)} with more than 1 MiB received "
          f"(`rb=`); the relayed cases are the ones whose path is turn-*.\n")
