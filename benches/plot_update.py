#!/usr/bin/env python3
"""Plots the result of benches/update_bench.py: time and bytes on the wire per step, left against rsync.

Two panels, one group of bars per step (the initial sync, then mutations a-d):
  * wall time (seconds): left (`left add` on A, then `left sync` on B, stacked), rsync; cat and cp of
    the base file as dashed lines (the physical floor of the initial sync).
  * MiB on the wire (log scale): left's UDP bytes both ways, rsync's client bytes both ways, with
    left's node and chunk payload and the least that must move (the new content) as markers.

  python3 benches/plot_update.py RESULT.json OUT.png     (RESULT.json: update_bench.py's stdout)
Used by update_bench.py --plot. Needs matplotlib.
"""
import json
import sys

MiB = 1 << 20
# The new (incompressible) content of each mutation, from gen.py: the least any tool must move.
MINIMUM = {"a": MiB, "b": MiB, "c": 16 * MiB, "d": 256 * 1024}
LEFT_COLOR = "#1f77b4"
LEFT_LIGHT = "#9ecae1"
RSYNC_COLOR = "#ff7f0e"


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = result["summary"]
    steps = ["initial", "a", "b", "c", "d"]
    labels = [f"initial\n{result['size'] / MiB:.0f} MiB", "a\n1 MiB overwrite", "b\n1 MiB insert",
              "c\n16 MiB append", "d\n64 x 4 KiB"]

    def get(step, side, key, default=None):
        e = (s.get(step) or {}).get(side) or {}
        v = e.get(key)
        return default if v is None else v

    xs = list(range(len(steps)))
    w = 0.38
    fig, (ax_t, ax_b) = plt.subplots(1, 2, figsize=(13, 5.2))

    # Time (linear): left's bar is split into `left add` on A and the rest (the sync on B).
    lt = [get(k, "left", "seconds", 0) for k in steps]
    la = [get(k, "left", "add_seconds", 0) for k in steps]
    rt = [get(k, "rsync", "seconds", 0) for k in steps]
    lx = [x - w / 2 for x in xs]
    ax_t.bar(lx, la, w, color=LEFT_LIGHT, label="left add on A")
    ax_t.bar(lx, [t - a for t, a in zip(lt, la)], w, bottom=la, color=LEFT_COLOR,
             label="left sync on B (checked out)")
    ax_t.bar([x + w / 2 for x in xs], rt, w, color=RSYNC_COLOR, label="rsync pull from the daemon")
    for x, v in list(zip(lx, lt)) + list(zip([x + w / 2 for x in xs], rt)):
        if v > 0:
            ax_t.annotate(f"{v:.2f}", (x, v), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                          textcoords="offset points")
    fl = result.get("floor") or {}
    for tool, style in (("cat", ":"), ("cp", "--")):
        if fl.get(tool):
            ax_t.axhline(fl[tool]["seconds"], color="grey", linestyle=style, linewidth=1,
                         label=f"{tool} of the base file ({fl[tool]['seconds']:.2f} s)")
    top = max(lt + rt + [0.1])
    ax_t.set_ylim(0, top * 1.45)
    ax_t.set_xticks(xs)
    ax_t.set_xticklabels(labels, fontsize=9)
    ax_t.set_ylabel("wall time (s)")
    ax_t.set_title("time per step (median of %d run%s)" % (result["runs"], "" if result["runs"] == 1 else "s"))
    ax_t.legend(fontsize=8, loc="upper center", ncol=2)
    ax_t.grid(axis="y", alpha=0.3)

    # Bytes (log, MiB).
    def both(step, side):
        a, b = get(step, side, "bytes_sent"), get(step, side, "bytes_received")
        return None if a is None or b is None else (a + b) / MiB

    lb = [both(k, "left") or 0 for k in steps]
    rb = [both(k, "rsync") or 0 for k in steps]
    ax_b.bar(lx, lb, w, label="left: UDP bytes, both ways", color=LEFT_COLOR)
    ax_b.bar([x + w / 2 for x in xs], rb, w, label="rsync: bytes, both ways", color=RSYNC_COLOR)
    for x, v in list(zip(lx, lb)) + list(zip([x + w / 2 for x in xs], rb)):
        if v > 0:
            ax_b.annotate(f"{v:.0f}" if v >= 100 else f"{v:.3g}", (x, v), ha="center", va="bottom", fontsize=8, xytext=(0, 2),
                          textcoords="offset points")
    payload = [get(k, "left", "payload_bytes_received") for k in steps]
    ax_b.scatter([x for x, p in zip(lx, payload) if p], [p / MiB for p in payload if p], marker="_", s=300,
                 color="black", zorder=3, label="left: node + chunk payload")
    mins = [result["size"] / MiB] + [MINIMUM[k] / MiB for k in steps[1:]]
    ax_b.scatter(xs, mins, marker="*", s=60, color="green", zorder=3, label="new content (least possible)")
    ax_b.set_yscale("log")
    ax_b.set_ylim(0.1, max(lb + rb + [1]) * 30)
    ax_b.set_xticks(xs)
    ax_b.set_xticklabels(labels, fontsize=9)
    ax_b.set_ylabel("MiB on the wire (log scale)")
    ax_b.set_title("bytes on the wire per step")
    ax_b.legend(fontsize=8, loc="upper center", ncol=2)
    ax_b.grid(axis="y", which="both", alpha=0.3)

    fig.suptitle(f"left serve/sync vs rsync daemon on loopback: {result['size'] / MiB:.0f} MiB mixed file, "
                 f"{result['cpus']} cores, encryption {result['encryption']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    with open(sys.argv[1]) as f:
        result = json.load(f)
    plot(result, sys.argv[2])


if __name__ == "__main__":
    main()
