#!/usr/bin/env python3
"""Bits per coordinate vs KL divergence for every codec in `polarquant perplexity --json` output.

    build/release/polarquant perplexity -f ../shared/data/emma.txt --ctx 2048 \\
        --codecs q4_0,kivi4,paper,polar37 --json > emma.json
    python3 scripts/plot_quality.py emma.json [more.json ...] -o quality.png

Bits per coordinate are measured from the cache (kv_bytes / kv_fp16_bytes * 16), so windows,
radii, scales and padding count. The Pareto front (no other codec has both fewer bits and a lower
KLD) is drawn as a line. Needs matplotlib (pip install matplotlib); the test suite does not.
"""
import argparse
import json
import sys


def load_points(paths):
    points = []  # (bits, kld, label, file index)
    for i, path in enumerate(paths):
        with open(path, encoding="utf-8") as f:
            report = json.load(f)
        for row in report.get("codecs", []):
            if row.get("kv_fp16_bytes", 0) <= 0:
                raise SystemExit(f"{path}: codec {row.get('codec')} has no kv_fp16_bytes")
            bits = 16.0 * row["kv_bytes"] / row["kv_fp16_bytes"]
            points.append((bits, row["kld_mean"], row["codec"], i))
    if not points:
        raise SystemExit("no codec rows in " + ", ".join(paths))
    return points


def pareto_front(points):
    """Points not dominated (fewer-or-equal bits and lower-or-equal KLD, one strictly)."""
    front = []
    for p in sorted(points, key=lambda q: (q[0], q[1])):
        if not front or p[1] < front[-1][1]:
            front.append(p)
    return front


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("reports", nargs="+", help="JSON files from polarquant perplexity --json")
    ap.add_argument("-o", "--output", default="quality.png", help="image file (png, svg, pdf)")
    ap.add_argument("--linear", action="store_true", help="linear KLD axis (default: log)")
    args = ap.parse_args(argv)
    points = load_points(args.reports)
    front = pareto_front(points)
    for b, k, label, i in sorted(points):
        mark = "*" if (b, k, label, i) in front else " "
        print(f"{mark} {label:32s} {b:6.3f} bits  KLD {k:.4f}  ({args.reports[i]})")

    import matplotlib  # imported late: listing the front needs no matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    markers = "osD^v<>"
    for i, path in enumerate(args.reports):
        mine = [p for p in points if p[3] == i]
        ax.scatter([p[0] for p in mine], [p[1] for p in mine], marker=markers[i % len(markers)],
                   label=path, zorder=3)
        for b, k, label, _ in mine:
            ax.annotate(label, (b, k), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.plot([p[0] for p in front], [p[1] for p in front], "k--", lw=1, label="Pareto front")
    if not args.linear:
        ax.set_yscale("log")
    ax.set_xlabel("bits per coordinate (measured cache bytes)")
    ax.set_ylabel("mean KL(fp16 cache || codec), nats/token")
    ax.set_title("KV-cache codecs: size vs quality")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(args.output, dpi=130)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
