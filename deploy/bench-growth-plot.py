"""Draw deploy/bench-growth.sh's results: ingest rate and peak RSS against orders in state.

Usage: bench-growth-plot.py RESULTS.csv RUN_ID[,RUN_ID...] OUT.png

Several run ids draw their points together (a later run's point replaces an earlier one's).
"""
import csv
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

INGEST = "ingest into the view (1 instance)"
RSS = "peak RSS of the instance during ingest"
RESTORE_RSS = "peak RSS of the instance during restore"
RESTORE = "restore, first restored record -> ready"


def main(path, run_ids, out):
    runs = run_ids.split(",")
    series = defaultdict(dict)  # (figure, partitions) -> {orders: value}
    with open(path, newline="") as f:
        for row in sorted(csv.DictReader(f), key=lambda r: r["run"]):
            if row["run"] in runs:
                series[(row["figure"], int(row["partitions"]))][int(row["orders"])] = float(row["value"])
    if not series:
        sys.exit(f"no rows of run(s) {run_ids} in {path}")
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.5))
    for ax, (figure, label) in zip(
        axes,
        [
            (INGEST, "ingest (events/s)"),
            (RESTORE, "restore (records/s)"),
            (RSS, "peak RSS during ingest (MiB)"),
            (RESTORE_RSS, "peak RSS during restore (MiB)"),
        ],
    ):
        for (name, parts), points in sorted(series.items()):
            if name != figure:
                continue
            xs = sorted(points)
            ax.plot(xs, [points[x] for x in xs], marker="o", label=f"{parts} partitions")
            for x in xs:
                ax.annotate(f"{points[x]:,.0f}", (x, points[x]), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
        ax.set_xscale("log")
        ax.set_xlabel("distinct orders in state")
        ax.set_title(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"paystream, default pipeline, exactly_once_v2, 1 instance (run {run_ids})")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


if __name__ == "__main__":
    main(*sys.argv[1:4])
