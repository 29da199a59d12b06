#!/usr/bin/env python3
"""Markdown report of a bench/run.sh result folder: one table with skiff and the peers from the same
run, the limits, time to first byte, and every issue-3 target as a ratio with met / MISSED.

usage: report.py RES [SIZE_MIB=1024] [BIG_MIB=4096] [TTFB_GIB=10]

Only runs whose output verified (match == ok) give numbers; the others are counted and listed.
MB/s is 1e6 B/s; "e2e" runs from starting the sender to the receiver's exit (includes the
sender's preparation, the receiver's fsync and final verification).
"""
import csv, os, statistics as st, sys

res = sys.argv[1]
SIZE = sys.argv[2] if len(sys.argv) > 2 else "1024"
BIG = sys.argv[3] if len(sys.argv) > 3 else "4096"
TG = sys.argv[4] if len(sys.argv) > 4 else "10"
rd = lambda n: list(csv.DictReader(open(os.path.join(res, n)))) if os.path.exists(os.path.join(res, n)) else []
med = lambda xs: st.median(xs) if xs else None
fmt = lambda x, p=0: "-" if x is None else f"{x:.{p}f}"

T = rd("transfers.csv")
Lm = rd("limits.csv")
TT = rd("ttfb.csv")
ver = {}
if os.path.exists(os.path.join(res, "versions.txt")):
    for l in open(os.path.join(res, "versions.txt")):
        if l.strip():
            k, _, v = l.strip().partition(" ")
            ver[k] = v


def group(tool, variant, size):
    rs = [r for r in T if r["tool"] == tool and r["variant"] == variant and r["size_mib"] == size]
    ok = [r for r in rs if r["match"] == "ok"]
    mib = int(size)
    d = dict(rows=rs, ok=ok, n=len(rs), nok=len(ok))
    d["e2e"] = med([float(r["mbps_e2e"]) for r in ok])
    d["recv"] = med([mib * 1048576 / 1e6 / float(r["recv_s"]) for r in ok])
    d["cpu_gib"] = med([(float(r["snd_cpu_s"]) + float(r["rcv_cpu_s"])
                         + (float(r["relay_cpu_s"]) if r["relay_cpu_s"] not in ("-", "") else 0)) * 1024 / mib for r in ok])
    d["snd_cpu"] = med([float(r["snd_cpu_s"]) for r in ok])
    d["rcv_cpu"] = med([float(r["rcv_cpu_s"]) for r in ok])
    d["snd_rss"] = max([float(r["snd_rss_mib"]) for r in ok], default=None)
    d["rcv_rss"] = max([float(r["rcv_rss_mib"]) for r in ok], default=None)
    d["runs"] = " / ".join(r["mbps_e2e"] if r["match"] == "ok" else f"~~{r['mbps_e2e']}~~ {r['match']}" for r in rs)
    d["loads"] = " / ".join(r["load1"] for r in rs)
    return d


def lim(metric):
    rs = [r for r in Lm if r["metric"] == metric]
    return dict(med=med([float(r["mbps"]) for r in rs]), runs=" / ".join(r["mbps"] for r in rs),
                loads=" / ".join(r["load1"] for r in rs), note=rs[0]["note"] if rs else "")


def size_s(mib):
    mib = int(mib)
    return f"{mib // 1024} GiB" if mib >= 1024 and mib % 1024 == 0 else f"{mib} MiB"


print(f"## Results in {res}\n")
for k in ("date", "command", "machine", "skiff", "sendme", "magic-wormhole", "load1/5/15"):
    if k in ver:
        print(f"- {k} {ver[k]}")
print()

rows = [("skiff", "direct", SIZE, "skiff, direct TCP"),
        ("sendme", "relay-disabled", SIZE, "sendme, QUIC direct, relays disabled"),
        ("magic-wormhole", "direct", SIZE, "magic-wormhole, direct TCP"),
        ("skiff", "direct", BIG, "skiff, direct TCP (peak RSS run)")]
G = {}
print("### Transfers over loopback (median of verified runs)\n")
print("| tool | size | verified | MB/s e2e median (runs) | MB/s recv-only | CPU-s snd / rcv | CPU-s/GiB (both) "
      "| peak RSS MiB snd / rcv (max) | load1 at runs |")
print("|---|---|---|---|---|---|---|---|---|")
seen = set()
for t, v, sz, label in rows:
    if (t, v, sz) in seen:
        continue
    seen.add((t, v, sz))
    g = G[(t, v, sz)] = group(t, v, sz)
    if not g["n"]:
        continue
    print(f"| {label} | {size_s(sz)} | {g['nok']}/{g['n']} | **{fmt(g['e2e'])}** ({g['runs']}) | {fmt(g['recv'])} "
          f"| {fmt(g['snd_cpu'], 1)} / {fmt(g['rcv_cpu'], 1)} | {fmt(g['cpu_gib'], 1)} "
          f"| {fmt(g['snd_rss'])} / {fmt(g['rcv_rss'])} | {g['loads']} |")
print()
print("### Limits measured in the same run\n")
print("| metric | MB/s median | runs | load1 at runs | note |\n|---|---|---|---|---|")
LIM = {}
for m, label in (("dd_write_fsync", "disk write + fsync (`dd bs=4M conv=fsync`)"),
                 ("socat_file_to_file_b1048576", "raw TCP copy of the same file (socat file->TCP->file, 1 MiB buf, no fsync)"),
                 ("iperf3_tcp_1stream", "loopback TCP mem->mem (iperf3)"),
                 ("cat_read", "cached read of the source (`cat`)")):
    LIM[m] = l = lim(m)
    if l["med"] is not None:
        print(f"| {label} | **{fmt(l['med'])}** | {l['runs']} | {l['loads']} | {l['note']} |")
print()

tt = [r for r in TT if r["size_gib"] == TG]
tt_ok = [float(r["ttfb_s"]) for r in tt if r["ttfb_s"] not in ("-", "")]
if tt:
    print(f"### Time to first byte, {TG} GiB sparse file (`truncate -s {TG}G`)\n")
    print("| run | load1 | sender start -> code (s) | receiver start -> first JSON line (s) "
          "| receiver start -> first progress bytes>0 (s) | receiver `connected` -> that (s) | sender start -> that (s) | bytes | note |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in tt:
        print(f"| {r['run']} | {r['load1']} | {r['code_s']} | {r['rcv_first_event_s']} | **{r['ttfb_s']}** "
              f"| {r.get('connected_to_first_s') or '-'} | {r['e2e_first_s']} | {r['first_bytes']} | {r['note']} |")
    print()

sk, sm, wh, big = G[("skiff", "direct", SIZE)], G[("sendme", "relay-disabled", SIZE)], \
    G[("magic-wormhole", "direct", SIZE)], G[("skiff", "direct", BIG)]


def ratio(a, b):
    return a / b if a is not None and b else None


def verdict(ok):
    return "-" if ok is None else ("met" if ok else "**MISSED**")


def paired(other):  # per-rep ratios skiff run r / other run r (both verified), rep-interleaved
    o = {r["run"]: float(r["mbps_e2e"]) for r in other["ok"]}
    return " / ".join(f"{float(r['mbps_e2e']) / o[r['run']]:.2f}" for r in sk["ok"] if r["run"] in o) or "-"


print("### Targets (issue 3)\n")
print("| target | measured | ratio / value | needed | verdict |\n|---|---|---|---|---|")
x = ratio(sk["e2e"], sm["e2e"])
print(f"| throughput vs sendme ({size_s(SIZE)}) | skiff {fmt(sk['e2e'])} vs sendme {fmt(sm['e2e'])} MB/s "
      f"(per rep: {paired(sm)}) | {fmt(x, 2)}x | >= 1.5x | {verdict(None if x is None else x >= 1.5)} |")
x = ratio(sk["e2e"], wh["e2e"])
print(f"| throughput vs magic-wormhole direct | skiff {fmt(sk['e2e'])} vs {fmt(wh['e2e'])} MB/s "
      f"(per rep: {paired(wh)}) | {fmt(x, 2)}x | >= 1.0x | {verdict(None if x is None else x >= 1.0)} |")
x = ratio(sk["e2e"], LIM["dd_write_fsync"]["med"])
print(f"| throughput vs disk write+fsync ceiling | skiff {fmt(sk['e2e'])} vs dd {fmt(LIM['dd_write_fsync']['med'])} MB/s "
      f"| {fmt(x and 100 * x)} % | >= 80 % | {verdict(None if x is None else x >= 0.8)} |")
x = ratio(sk["e2e"], LIM["socat_file_to_file_b1048576"]["med"])
print(f"| (info) vs raw TCP copy of the same file | skiff {fmt(sk['e2e'])} vs socat {fmt(LIM['socat_file_to_file_b1048576']['med'])} MB/s "
      f"| {fmt(x, 2)}x | - | - |")
c = sk["cpu_gib"]
print(f"| CPU per GiB, both sides ({size_s(SIZE)}) | snd {fmt(sk['snd_cpu'], 2)} + rcv {fmt(sk['rcv_cpu'], 2)} CPU-s "
      f"(sendme {fmt(sm['cpu_gib'], 1)}, wormhole {fmt(wh['cpu_gib'], 1)} CPU-s/GiB) | {fmt(c, 2)} CPU-s/GiB | <= 6 "
      f"| {verdict(None if c is None else c <= 6)} |")
if big["nok"] or big["n"]:
    ok = None if big["snd_rss"] is None else (big["snd_rss"] <= 64 and big["rcv_rss"] <= 64)
    print(f"| peak RSS per side, {size_s(BIG)} | {big['nok']}/{big['n']} verified, {fmt(big['e2e'])} MB/s, "
          f"{fmt(big['cpu_gib'], 2)} CPU-s/GiB | snd {fmt(big['snd_rss'])} / rcv {fmt(big['rcv_rss'])} MiB | <= 64 MiB each "
          f"| {verdict(ok)} |")
if tt:
    m = med(tt_ok)
    ok = None if m is None else (len(tt_ok) == len(tt) and max(tt_ok) <= 1.0)
    print(f"| first byte, {TG} GiB sparse | {len(tt_ok)}/{len(tt)} runs saw bytes>0, runs {' / '.join(r['ttfb_s'] for r in tt)} s "
          f"| median {fmt(m, 3)} s (max {fmt(max(tt_ok) if tt_ok else None, 3)}) | <= 1 s | {verdict(ok)} |")
bad = [r for r in T if r["match"] != "ok"]
if bad:
    print(f"\nUnverified runs (no number): " + "; ".join(f"{r['tool']} {r['size_mib']} MiB run {r['run']}: {r['match']} ({r['path']})" for r in bad))
if os.path.exists(os.path.join(res, "errors.txt")):
    print("\nErrors during the run:\n")
    for l in open(os.path.join(res, "errors.txt")):
        print(f"- {l.strip()}")
