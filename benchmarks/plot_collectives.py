"""Plot benchmarks/collectives.py JSON results: one panel per backend and
world size, median us per call against rows per rank (log-log).

    python benchmarks/plot_collectives.py docs/collectives-nccl-h200.json -o docs/collectives-nccl-h200.png

Needs matplotlib (not a dependency of this project: pip install matplotlib).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

LINES = [
    ("list", "list path (3 gathers)"),
    ("list_alloc", "list path, fresh outputs"),
    ("packed", "packed (patch 0002)"),
    ("single", "single same-byte gather"),
    ("packed+barrier", "packed + barrier"),
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("json", nargs="+", help="files written by collectives.py --json")
    p.add_argument("-o", "--output", default="collectives.png")
    args = p.parse_args()
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        sys.exit("plot_collectives: matplotlib is not installed; pip install matplotlib")

    panels = []
    for path in args.json:
        data = json.loads(Path(path).read_text())
        meta, rows = data["meta"], data["results"]
        for ws in sorted({r["world_size"] for r in rows}):
            panels.append((meta, [r for r in rows if r["world_size"] == ws], ws))
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (meta, rows, ws) in zip(axes[0], panels):
        for method, label in LINES:
            pts = sorted(
                (r["rows"], r["median_us"])
                for r in rows
                if r["method"] == method and r.get("mode", "latency") == "latency"
            )
            if pts:
                ax.plot(*zip(*pts), marker="o", label=label)
            pts = sorted(
                (r["rows"], r["median_us"]) for r in rows if r["method"] == method and r.get("mode") == "pipelined"
            )
            if pts:
                ax.plot(
                    *zip(*pts), marker=".", linestyle=":", color=ax.lines[-1].get_color(), label=label + ", pipelined"
                )
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"rows per rank (H = {meta['hidden']})")
        ax.set_ylabel("median us per call")
        ax.set_title(f"{meta['backend']} x{ws}\n{meta['device']}", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output, dpi=120)
    print(args.output)


if __name__ == "__main__":
    main()
