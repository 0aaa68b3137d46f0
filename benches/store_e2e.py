#!/usr/bin/env python3
"""End-to-end store benchmark of `left` on the shared 1 GiB data set (issue 2).

Generates (or reuses) the mixed base file and its mutations a-d with ../shared/bench/gen.py, then in
one run measures, on a warm page cache:

  * baselines on the base file: `cat FILE >/dev/null`, `b3sum FILE`, `zstd -1 -T2 -c FILE >/dev/null`
  * `left add` of the base into a fresh store: wall time, throughput, peak RSS
  * `left add` again with nothing changed: wall time and bytes_read (floor: < 0.1 s, 0 bytes)
  * store growth (bytes_stored, nodes included) when the file is replaced by mutation a, b, c, d in turn
  * `left restore` of the base snapshot: wall time and throughput; the restored file is compared
  * peak RSS of every `left` process (wait4 rusage)

Prints a readable table on stderr and one JSON object on stdout. Python 3 standard library only.

  python3 benches/store_e2e.py [--left PATH] [--data DIR] [--size BYTES] [--quick] [--keep]
"""
import argparse
import filecmp
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from benchdata import default_gen, ensure_data, place

MiB = 1 << 20
GiB = 1 << 30
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

# Floors from issue 2 (2 cores, warm page cache).
FLOOR_GROWTH = {"a": 1.5 * MiB, "b": 1.5 * MiB, "c": 17 * MiB, "d": 8 * MiB}
FLOOR_RESTORE_MBPS = 300.0
FLOOR_ADD_VS_ZSTD = 0.5
FLOOR_RESCAN_S = 0.1
FLOOR_RSS = 256 * MiB


def default_left():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    return os.path.join(target, "release", "left")


def run_measured(argv, cwd=None, env=None):
    """Runs argv; returns (seconds, exit code, stdout text, stderr text, peak RSS bytes)."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        # Earlier steps' dirty pages are written back first, so their writeback is not charged to
        # this step (the page cache stays warm).
        os.sync()
        start = time.perf_counter()
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        # ru_maxrss is in KiB on Linux.
        return (seconds, proc.returncode, out.read().decode("utf-8", "replace"),
                err.read().decode("utf-8", "replace"), usage.ru_maxrss * 1024)


def run_shell_timed(cmd):
    """Times a shell pipeline (for the baselines); returns seconds or raises on failure."""
    os.sync()
    start = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


class Left:
    def __init__(self, binary, store):
        self.binary = binary
        self.store = store
        self.rss = []

    def json(self, *args, cwd=None, expect=(0,)):
        argv = [self.binary, "--store", self.store, "--json", *args]
        env = dict(os.environ)
        env.pop("LEFT_FAULT", None)
        secs, code, out, err, rss = run_measured(argv, cwd=cwd, env=env)
        self.rss.append((args[0], rss))
        if code not in expect:
            sys.exit(f"store_e2e: {' '.join(argv)} exited {code}:\n{err}")
        return secs, json.loads(out), rss


def baselines(path):
    size = os.path.getsize(path)
    res = {}
    tools = {
        "cat": ("cat", f"cat '{path}' >/dev/null"),
        "b3sum": ("b3sum", f"b3sum '{path}' >/dev/null"),
        "zstd -1 -T2": ("zstd", f"zstd -1 -T2 -c '{path}' >/dev/null"),
    }
    for name, (tool, cmd) in tools.items():
        if shutil.which(tool) is None:
            print(f"note: {tool} is not installed; baseline '{name}' skipped", file=sys.stderr)
            res[name] = None
            continue
        secs = run_shell_timed(cmd)
        res[name] = {"seconds": round(secs, 3), "mb_per_s": round(size / secs / 1e6, 1)}
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--left", default=default_left(), help="left binary (default: %(default)s)")
    ap.add_argument("--data", help="data folder (default: /var/tmp/left-bench/e2e-SIZE)")
    ap.add_argument("--size", type=int, default=GiB, help="base file size in bytes (default 1 GiB)")
    ap.add_argument("--quick", action="store_true", help="small CI-sized run (64 MiB base)")
    ap.add_argument("--gen", default=default_gen(REPO),
                    help="path of gen.py (default: $LEFT_BENCH_GEN, else ../shared/bench/gen.py beside this repo or beside the one it was cloned from)")
    ap.add_argument("--work", default=None, help="folder for the share, store and restore (default: a temp folder)")
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()
    if args.quick:
        args.size = 64 * MiB
    left_bin = os.path.abspath(args.left)
    if not os.access(left_bin, os.X_OK):
        sys.exit(f"store_e2e: no left binary at {left_bin} (build it: cargo build --release --bin left)")
    data = args.data or f"/var/tmp/left-bench/e2e-{args.size}"
    generated = ensure_data(data, args.size, os.path.abspath(args.gen))
    base = os.path.join(data, "base.bin")
    size = os.path.getsize(base)

    work = tempfile.mkdtemp(prefix="left-e2e.", dir=args.work or "/var/tmp")
    try:
        share = os.path.join(work, "share")
        store = os.path.join(work, "store")
        os.makedirs(share)
        # Warm the page cache for every input, so all measurements read from memory.
        for name in ["base.bin"] + [f"mut_{k}.bin" for k in "abcd"]:
            run_shell_timed(f"cat '{os.path.join(data, name)}' >/dev/null")
        base_lines = baselines(base)

        left = Left(left_bin, store)
        left.json("init", share)
        target = os.path.join(share, "data.bin")
        place(base, target)

        secs, add, rss_add = left.json("add", "-m", "base")
        first_snapshot = add["snapshot"]
        add_res = {"seconds": round(secs, 3), "mb_per_s": round(size / secs / 1e6, 1),
                   "bytes_read": add["bytes_read"], "bytes_new": add["bytes_new"],
                   "bytes_stored": add["bytes_stored"], "peak_rss": rss_add}

        secs, again, _ = left.json("add")
        rescan = {"seconds": round(secs, 3), "bytes_read": again["bytes_read"],
                  "snapshot": again["snapshot"]}
        # Once more: the first rescan may pay for work the add left behind (e.g. WAL replay at open).
        secs, again2, _ = left.json("add")
        rescan["again_seconds"] = round(secs, 3)
        rescan["again_bytes_read"] = again2["bytes_read"]

        growth = {}
        for k in "abcd":
            place(os.path.join(data, f"mut_{k}.bin"), target)
            secs, rep, rss = left.json("add", "-m", f"mutation {k}")
            growth[k] = {"bytes_stored": rep["bytes_stored"], "bytes_new": rep["bytes_new"],
                         "bytes_read": rep["bytes_read"], "seconds": round(secs, 3), "peak_rss": rss}

        out_dir = os.path.join(work, "restored")
        secs, rest, rss_restore = left.json("restore", first_snapshot, "--to", out_dir)
        restored = os.path.join(out_dir, "data.bin")
        identical = filecmp.cmp(base, restored, shallow=False)
        restore_res = {"seconds": round(secs, 3), "mb_per_s": round(rest["bytes_written"] / secs / 1e6, 1),
                       "bytes_written": rest["bytes_written"], "identical": identical,
                       "peak_rss": rss_restore}
        secs, ver, rss_verify = left.json("verify")
        verify_res = {"seconds": round(secs, 3), "ok": ver["ok"], "peak_rss": rss_verify}
        store_du = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(store) for f in fs)
    finally:
        if args.keep:
            print(f"work folder kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    peak_rss = max(r for _, r in left.rss)
    zstd = base_lines.get("zstd -1 -T2")
    floors = {
        "add_vs_zstd": None if zstd is None else add_res["mb_per_s"] >= FLOOR_ADD_VS_ZSTD * zstd["mb_per_s"],
        "restore_mb_per_s": restore_res["mb_per_s"] >= FLOOR_RESTORE_MBPS,
        "rescan_seconds": rescan["seconds"] < FLOOR_RESCAN_S and rescan["bytes_read"] == 0,
        "peak_rss": peak_rss <= FLOOR_RSS,
        **{f"growth_{k}": growth[k]["bytes_stored"] <= FLOOR_GROWTH[k] for k in "abcd"},
    }
    result = {
        "bench": "store_e2e", "size": size, "quick": args.quick, "data": data, "generated": generated,
        "cpus": os.cpu_count(), "baselines": base_lines, "add": add_res, "rescan": rescan,
        "growth": growth, "restore": restore_res, "verify": verify_res, "store_bytes_on_disk": store_du,
        "peak_rss": peak_rss, "floors_met": floors,
    }

    def row(name, value, floor="", ok=None):
        mark = "" if ok is None else ("ok" if ok else "MISSED")
        print(f"  {name:<34} {value:>22}  {floor:<22} {mark}", file=sys.stderr)

    print(f"\nleft store end to end, {size / MiB:.0f} MiB base{' (quick)' if args.quick else ''}", file=sys.stderr)
    for name, r in base_lines.items():
        row(f"baseline {name}", "missing" if r is None else f"{r['seconds']:.3f} s {r['mb_per_s']:.0f} MB/s")
    row("left add (fresh store)", f"{add_res['seconds']:.3f} s {add_res['mb_per_s']:.0f} MB/s",
        f">= {FLOOR_ADD_VS_ZSTD:.0%} of zstd -1 -T2", floors["add_vs_zstd"])
    row("left add (unchanged)", f"{rescan['seconds']:.3f} s read {rescan['bytes_read']} B",
        f"< {FLOOR_RESCAN_S} s, 0 B", floors["rescan_seconds"])
    row("left add (unchanged, again)", f"{rescan['again_seconds']:.3f} s read {rescan['again_bytes_read']} B")
    for k in "abcd":
        g = growth[k]
        row(f"growth after mutation {k}", f"{g['bytes_stored'] / MiB:.2f} MiB",
            f"<= {FLOOR_GROWTH[k] / MiB:g} MiB", floors[f"growth_{k}"])
    row("left restore", f"{restore_res['seconds']:.3f} s {restore_res['mb_per_s']:.0f} MB/s",
        f">= {FLOOR_RESTORE_MBPS:.0f} MB/s", floors["restore_mb_per_s"])
    row("restored bytes identical", str(identical))
    row("left verify", f"{verify_res['seconds']:.3f} s ok={verify_res['ok']}")
    row("store on disk", f"{store_du / MiB:.1f} MiB")
    row("peak RSS (any left process)", f"{peak_rss / MiB:.1f} MiB", f"<= {FLOOR_RSS / MiB:.0f} MiB",
        floors["peak_rss"])
    print(json.dumps(result))


if __name__ == "__main__":
    main()
