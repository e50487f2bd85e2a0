#!/usr/bin/env python3
"""Render bench/compare.sh results (JSON lines) as a Markdown section.

Usage: bench/render.py results.jsonl >> docs/benchmarks.md

One row per scenario: its parameters, each server's headline figure, and
Armoricore's advantage over the best peer (>1 means Armoricore is better,
whichever direction the figure goes).
"""
import json
import platform
import subprocess
import sys
from datetime import datetime, timezone

SERVERS = ["armoricore", "socketio", "sockudo"]
NAMES = {"armoricore": "Armoricore", "socketio": "Socket.IO 4.8", "sockudo": "Sockudo 5.2"}


def lat(d, key):
    l = d.get(key) or {}
    return l.get("p99_ms"), l.get("p50_ms")


def headline(d):
    """(value for the ratio, higher_is_better, text) of one result."""
    s = d["scenario"]
    if s == "idle":
        kib = (d.get("server") or {}).get("rss_per_conn_kib")
        cpu = (d.get("server") or {}).get("cpu_s_per_conn_hour")
        return kib, False, f"{kib} KiB/conn, {cpu} CPU-s/conn-h ({d['established']}/{d['connections']})"
    if s == "connect":
        p99, p50 = lat(d, "latency")
        return d["connects_per_s"], True, f"{d['connects_per_s']:.0f}/s, p50 {p50} ms, p99 {p99} ms"
    if s in ("fanout", "rooms"):
        p99, p50 = lat(d, "delivery_latency")
        per_cpu = (d.get("server") or {}).get("deliveries_per_cpu_s")
        search = d.get("search") or {}
        rate = ""
        if search:
            met = "" if search.get("met") else f" (none met p99 ≤ {search.get('p99_ms_bound'):.0f} ms: lowest tried)"
            rate = f"publish {search.get('publish_rate'):.1f}/s{met}, "
        text = f"{rate}{d['deliveries_per_s']:.0f} deliveries/s, p50 {p50} ms, p99 {p99} ms, {per_cpu} per server CPU-s"
        if s == "fanout" and search.get("met"):
            return d["deliveries_per_s"], True, text
        # At a fixed offered load (or when no rate met the bound) every server
        # delivers about the same; latency tells them apart.
        return p99, False, text
    if s == "presence":
        c = d.get("convergence") or {}
        mx = c.get("max_ms")
        return mx, False, f"{d['converged']}/{d['connections']} views converged, all after {mx and mx / 1000:.2f} s"
    return None, True, "?"


def params(d):
    s = d["scenario"]
    n, procs = d.get("connections"), d.get("procs")
    if s == "idle":
        return f"{n} conns × 1 topic, {procs} client procs, hold {d.get('hold_s', 0):.0f} s"
    if s == "connect":
        return f"{n} connect+auth+join, {procs} procs, {d.get('concurrency')} in flight"
    if s == "fanout":
        bound = (d.get("search") or {}).get("p99_ms_bound")
        search = f", highest rate with p99 ≤ {bound:.0f} ms" if bound else f", {d.get('published_per_s', 0):.0f} msgs/s"
        return f"{n} subscribers in 1 topic, 1 publisher, ~100 B{search}"
    if s == "rooms":
        return f"{n} users in {d.get('rooms')} rooms, {d.get('published_per_s', 0):.0f} msgs/s"
    if s == "presence":
        return f"{n} joins on 1 topic at {d.get('rate')}/s"
    return ""


def main():
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    by = {}
    for r in rows:
        if "scenario" in r:
            key = r["scenario"] + ("-search" if r.get("search") else "")
            by.setdefault(key, {})[r["target"]] = r
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    cpus = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    print(f"\n## Side-by-side run, {date}, commit {commit}\n")
    print(f"Machine: {platform.machine()}, {cpus} cores, Linux {platform.release()}; server and clients share the cores "
          "(nothing pinned). Each server started fresh per scenario. Produced by `bench/compare.sh`.\n")
    print("| scenario | parameters | " + " | ".join(NAMES[s] for s in SERVERS) + " | Armoricore vs best peer |")
    print("|---|---|" + "---|" * len(SERVERS) + "---|")
    for scenario in ["idle", "connect", "fanout", "fanout-search", "rooms", "presence"]:
        results = by.get(scenario)
        if not results:
            continue
        cells, values = [], {}
        for s in SERVERS:
            d = results.get(s)
            if d is None:
                cells.append("—")
            elif "error" in d:
                cells.append(f"n/a ({d['error']})")
            else:
                v, higher, text = headline(d)
                values[s] = (v, higher)
                cells.append(text)
        ratio = "—"
        peers = [values[s][0] for s in SERVERS[1:] if s in values and values[s][0]]
        if "armoricore" in values and values["armoricore"][0] and peers:
            ours, higher = values["armoricore"]
            best = max(peers) if higher else min(peers)
            ratio = f"{(ours / best if higher else best / ours):.2f}×"
        first = next(iter(results.values()))
        print(f"| {scenario} | {params(first)} | " + " | ".join(cells) + f" | {ratio} |")
    errors = [r for r in rows if "scenario" not in r and "error" in r]
    for e in errors:
        print(f"\n{NAMES.get(e['target'], e['target'])}: {e['error']}")


if __name__ == "__main__":
    main()
