"""Data helpers shared by the end-to-end benchmark scripts (store_e2e.py, update_bench.py)."""

import json
import os
import shutil
import subprocess
import sys

KINDS = "abcd"


def default_gen(repo):
    """Where gen.py is: $LEFT_BENCH_GEN; else ../shared/bench/gen.py beside this repository; else
    beside the repository it was cloned from (a fresh clone in /tmp, as CI makes, has no
    ../shared of its own). The first candidate is returned when none exists (the error names it)."""
    env = os.environ.get("LEFT_BENCH_GEN")
    if env:
        return env
    rel = os.path.join("..", "shared", "bench", "gen.py")
    candidates = [os.path.join(repo, rel)]
    try:
        origin = subprocess.run(["git", "-C", repo, "config", "--get", "remote.origin.url"],
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        origin = ""
    if origin and os.path.isdir(origin):
        candidates.append(os.path.join(origin, rel))
    for c in candidates:
        if os.path.isfile(c):
            return os.path.normpath(c)
    return os.path.normpath(candidates[0])


def ensure_data(data_dir, size, gen):
    """Reuses DIR/base.bin and mut_{a..d}.bin when they match the size; else runs gen.py all.
    Returns whether it generated them."""
    names = ["base.bin"] + [f"mut_{k}.bin" for k in KINDS]
    stamp = os.path.join(data_dir, "params.json")
    want = {"size": size, "seed": 42}
    try:
        with open(stamp) as f:
            have = json.load(f)
        if have == want and all(os.path.isfile(os.path.join(data_dir, n)) for n in names):
            return False
    except (OSError, ValueError):
        pass
    if not os.path.isfile(gen):
        sys.exit(f"data generator not found at {gen} (pass --gen PATH or set LEFT_BENCH_GEN)")
    os.makedirs(data_dir, exist_ok=True)
    print(f"generating {size} byte data set in {data_dir} ...", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, gen, "all", data_dir, "--size", str(size)], check=True,
                   stdout=subprocess.DEVNULL)
    with open(stamp, "w") as f:
        json.dump(want, f)
    return True


def place(src, dst):
    """Puts src at dst by rename (hard link when possible: no copy time, a fresh inode per source)."""
    tmp = dst + ".bench-tmp"
    if os.path.lexists(tmp):
        os.unlink(tmp)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copy2(src, tmp)
    os.replace(tmp, dst)
