#!/usr/bin/env python3
"""Plots of the newest load-harness results (matplotlib, from the bench venv).

    target/bench-venv/bin/python benches/load/plot.py benches/results [tag]

Writes, next to the JSON it reads (small PNGs, meant to be committed):
- <date>-throughput.png: requests/s against concurrency (scenario 1 sweep);
- <date>-cdf-<scenario>.png: latency CDF per system (median run), with the
  tail stretched (x = latency, y = percentile on a log-of-(1-q) scale).
"""

import glob
import json
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter  # noqa: E402

COLORS = {"direct": "#888888", "tollgate": "#d62728", "tollgate-legacy": "#ff9896",
          "tollgate-noebpf": "#e377c2", "tollgate-pgo": "#8c564b",
          "nginx": "#1f77b4", "nginx-lua": "#17becf", "envoy": "#2ca02c", "litellm": "#9467bd",
          "floor": "#000000"}


TAG = ""


def newest(outdir, scenario):
    files = sorted(glob.glob(os.path.join(outdir, f"*-{scenario}{TAG}.json")))
    return files[-1] if files else None


def median_run(runs):
    return sorted(runs, key=lambda r: r["rps"])[len(runs) // 2]


def throughput(outdir):
    path = newest(outdir, "1-forward")
    if not path:
        return
    with open(path) as f:
        doc = json.load(f)
    sweep = doc["cell"].get("sweep")
    if not sweep:
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    for name, pts in sweep.items():
        label = doc["cell"]["systems"][name]["label"]
        ax.plot([p["concurrency"] for p in pts], [p["rps"] for p in pts], marker="o",
                label=label, color=COLORS.get(name))
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent connections (closed loop)")
    ax.set_ylabel("requests/s")
    ax.set_title("Scenario 1, JSON forwarding: throughput vs concurrency", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, f"{doc['meta']['date']} · {doc['meta']['commit']} · load {' '.join(doc['meta']['loadavg_before'])}",
             fontsize=6, color="#666666")
    fig.tight_layout()
    out = os.path.join(outdir, f"{doc['meta']['date'][:10]}-throughput{TAG}.png")
    fig.savefig(out)
    print(out)


def cdf(outdir, scenario):
    path = newest(outdir, scenario)
    if not path:
        return
    with open(path) as f:
        doc = json.load(f)
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    any_ = False
    for name, e in doc["cell"]["systems"].items():
        runs = e.get("runs") or []
        if not runs or not runs[0].get("latency_cdf"):
            continue
        r = median_run(runs)
        pts = [(q, v) for q, v in r["latency_cdf"] if q < 1.0]
        ax.plot([v / 1000 for _, v in pts], [-__import__("math").log10(1 - q) for q, _ in pts],
                label=e["label"], color=COLORS.get(name))
        any_ = True
    if not any_:
        plt.close(fig)
        return
    ticks = [0, 1, 2, 3, 4]
    ax.yaxis.set_major_locator(FixedLocator(ticks))
    ax.yaxis.set_major_formatter(FuncFormatter(
        lambda y, _: {0: "0", 1: "90", 2: "99", 3: "99.9", 4: "99.99"}.get(int(round(y)), "")))
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (log)")
    ax.set_ylabel("percentile")
    c = doc["cell"]
    ax.set_title(f"Scenario {scenario}: latency CDF, closed loop c={c.get('concurrency')}",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.text(0.01, 0.01, f"{doc['meta']['date']} · {doc['meta']['commit']} · load {' '.join(doc['meta']['loadavg_before'])}",
             fontsize=6, color="#666666")
    fig.tight_layout()
    out = os.path.join(outdir, f"{doc['meta']['date'][:10]}-cdf-{scenario}{TAG}.png")
    fig.savefig(out)
    print(out)


def main():
    global TAG
    outdir = sys.argv[1] if len(sys.argv) > 1 else "benches/results"
    TAG = sys.argv[2] if len(sys.argv) > 2 else ""
    throughput(outdir)
    for s in ("1-forward", "1-forward-32k", "2-routing", "3-sse50", "3-sse1000",
              "3-sse50-paced"):
        cdf(outdir, s)


if __name__ == "__main__":
    main()
