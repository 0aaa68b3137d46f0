#!/usr/bin/env python3
"""Many-small-files benchmark of `left` (issue 2).

Builds (or reuses) a deterministic tree of 100,000 files of 1-16 KiB (100 folders of 1,000 files;
contents from a seeded PRNG, so every run gets the same bytes), then measures:

  * the first `left add` into a fresh store: wall time, files/s, MB/s, peak RSS
  * `left add` of the unchanged tree (a rescan; floor: under 1 s), and that it reads 0 bytes
  * `left add` after changing 10 files (a rescan that finds a little work)

The store lives outside the tree (--store), so the tree is reused as is between runs. Prints a
readable table on stderr and one JSON object on stdout. Python 3 standard library only.

  python3 benches/many_files.py [--left PATH] [--data DIR] [--files N] [--quick] [--keep]
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

KiB = 1 << 10
MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
FLOOR_RESCAN_S = 1.0
PER_DIR = 1000
SEED = 7


def default_left():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    return os.path.join(target, "release", "left")


def run_measured(argv):
    """Runs argv; returns (seconds, exit code, stdout, stderr, peak RSS bytes)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        env = dict(os.environ)
        env.pop("LEFT_FAULT", None)
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return seconds, code, out.read().decode("utf-8", "replace"), err.read().decode(
            "utf-8", "replace"), usage.ru_maxrss * 1024


def ensure_tree(root, files):
    """Writes the tree unless ROOT.params.json says it is already there; returns total bytes."""
    stamp = root.rstrip("/") + ".params.json"
    want = {"files": files, "seed": SEED, "per_dir": PER_DIR}
    try:
        with open(stamp) as f:
            have = json.load(f)
        if have.get("params") == want:
            return have["bytes"], False
    except (OSError, ValueError, KeyError):
        pass
    if os.path.isdir(root):
        shutil.rmtree(root)
    if os.path.exists(stamp):
        os.unlink(stamp)
    print(f"generating {files} files in {root} ...", file=sys.stderr)
    rng = random.Random(SEED)
    total = 0
    for i in range(files):
        d = os.path.join(root, f"d{i // PER_DIR:04}")
        if i % PER_DIR == 0:
            os.makedirs(d)
        n = rng.randint(1 * KiB, 16 * KiB)
        with open(os.path.join(d, f"f{i:06}.bin"), "wb") as f:
            f.write(rng.randbytes(n))
        total += n
    # Fixed mtimes (2020-09-13): a scan cache may rightly re-read files modified just before a scan.
    for dirpath, _, names in os.walk(root):
        for name in names:
            os.utime(os.path.join(dirpath, name), ns=(1_600_000_000 * 10**9, 1_600_000_000 * 10**9))
    with open(stamp, "w") as f:
        json.dump({"params": want, "bytes": total}, f)
    return total, True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--left", default=default_left(), help="left binary (default: %(default)s)")
    ap.add_argument("--data", help="tree folder (default: /var/tmp/left-bench/many-N)")
    ap.add_argument("--files", type=int, default=100_000, help="number of files (default 100000)")
    ap.add_argument("--quick", action="store_true", help="small CI-sized run (5,000 files)")
    ap.add_argument("--work", default=None, help="folder for the store (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the store")
    args = ap.parse_args()
    if args.quick:
        args.files = 5_000
    left_bin = os.path.abspath(args.left)
    if not os.access(left_bin, os.X_OK):
        sys.exit(f"many_files: no left binary at {left_bin} (build it: cargo build --release --bin left)")
    root = args.data or f"/var/tmp/left-bench/many-{args.files}"
    total, generated = ensure_tree(root, args.files)
    # Warm the page cache and the inode cache.
    subprocess.run(f"find '{root}' -type f -exec cat {{}} + >/dev/null", shell=True, check=True)

    work = tempfile.mkdtemp(prefix="left-many.", dir=args.work or "/var/tmp")
    store = os.path.join(work, "store")
    results = {}
    try:
        def left(*a):
            secs, code, out, err, rss = run_measured([left_bin, "--store", store, "--json", *a])
            if code != 0:
                sys.exit(f"many_files: left {' '.join(a)} exited {code}:\n{err}")
            return secs, json.loads(out), rss

        left("init", root)
        secs, first, rss = left("add", "-m", "first")
        results["first_add"] = {"seconds": round(secs, 3), "files": first["files"],
                                "files_per_s": round(first["files"] / secs), "mb_per_s": round(total / secs / 1e6, 1),
                                "bytes_read": first["bytes_read"], "bytes_stored": first["bytes_stored"],
                                "peak_rss": rss}
        secs, again, rss = left("add")
        results["rescan"] = {"seconds": round(secs, 3), "bytes_read": again["bytes_read"],
                             "snapshot": again["snapshot"], "peak_rss": rss}
        # Once more: the first rescan may pay for work the add left behind (e.g. WAL replay at open).
        secs, again2, rss = left("add")
        results["rescan_again"] = {"seconds": round(secs, 3), "bytes_read": again2["bytes_read"],
                                   "peak_rss": rss}
        # Change 10 files (same size, new bytes, new mtime) and rescan.
        rng = random.Random(99)
        changed = []
        for i in rng.sample(range(args.files), 10):
            p = os.path.join(root, f"d{i // PER_DIR:04}", f"f{i:06}.bin")
            changed.append((p, open(p, "rb").read(), os.stat(p)))
            with open(p, "r+b") as f:
                f.write(rng.randbytes(64))
        try:
            secs, ten, rss = left("add", "-m", "ten changed")
            results["rescan_10_changed"] = {"seconds": round(secs, 3), "bytes_read": ten["bytes_read"],
                                            "bytes_new": ten["bytes_new"], "peak_rss": rss}
        finally:
            # Put the tree back exactly, so the next run can reuse it.
            for p, data, st in changed:
                with open(p, "wb") as f:
                    f.write(data)
                os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    finally:
        if args.keep:
            print(f"store kept: {store}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    floors = {"rescan_seconds": results["rescan"]["seconds"] < FLOOR_RESCAN_S
              and results["rescan"]["bytes_read"] == 0}
    result = {"bench": "many_files", "files": args.files, "bytes": total, "quick": args.quick,
              "data": root, "generated": generated, "cpus": os.cpu_count(), **results, "floors_met": floors}
    f, r, r2, t = (results["first_add"], results["rescan"], results["rescan_again"],
                   results["rescan_10_changed"])
    print(f"\nleft many small files: {args.files} files, {total / MiB:.0f} MiB{' (quick)' if args.quick else ''}",
          file=sys.stderr)
    print(f"  first add          {f['seconds']:8.3f} s  {f['files_per_s']:>8} files/s  {f['mb_per_s']:7.1f} MB/s"
          f"  peak RSS {f['peak_rss'] / MiB:.0f} MiB", file=sys.stderr)
    print(f"  rescan (unchanged) {r['seconds']:8.3f} s  read {r['bytes_read']} B"
          f"  (floor < {FLOOR_RESCAN_S:g} s: {'ok' if floors['rescan_seconds'] else 'MISSED'})", file=sys.stderr)
    print(f"  rescan (again)     {r2['seconds']:8.3f} s  read {r2['bytes_read']} B", file=sys.stderr)
    print(f"  rescan (10 changed){t['seconds']:8.3f} s  read {t['bytes_read']} B", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
