#!/usr/bin/env bash
# A/B comparison of the initial 1 GiB sync between left binaries, alternated on the same data:
# a fresh peer B syncs the whole base file from a peer A serving it on 127.0.0.1:23998.
# Prints per run: wall, user and sys CPU of B (GNU time), `fetch_seconds` and
# `checkout_seconds` from `left sync --json`, and A's CPU ticks (user, sys) from /proc.
# B's file is compared with A's after every run.
#
# Usage: benches/ab_initial_sync.sh ROUNDS LEFT_BINARY... (data: $LEFT_BENCH_DATA, default
# /var/tmp/left-bench/e2e-1073741824, made by update_bench.py; work folder: $WORK, default
# /var/tmp/left-ab). With LEFT_BENCH_TREE=DIR, A shares a hard-linked copy of the folder DIR
# instead of base.bin, and B's tree is compared with `diff -r`. With LEFT_BENCH_DROP_CACHES=1 (root),
# every run starts after `sync` and dropping the page, dentry and inode caches, so one run's deletes
# and cached metadata do not land in the next run's time.
set -euo pipefail
ROUNDS=$1; shift
D=${LEFT_BENCH_DATA:-/var/tmp/left-bench/e2e-1073741824}
W=${WORK:-/var/tmp/left-ab}
PORT=127.0.0.1:23998
mkdir -p "$W"
for r in $(seq "$ROUNDS"); do
  for L in "$@"; do
    rm -rf "$W/a" "$W/b"; mkdir -p "$W/a" "$W/b"
    if [ -n "${LEFT_BENCH_DROP_CACHES:-}" ]; then sync; echo 3 > /proc/sys/vm/drop_caches; fi
    "$L" init -q "$W/a"
    if [ -n "${LEFT_BENCH_TREE:-}" ]; then cp -al "$LEFT_BENCH_TREE" "$W/a/t"; else cp "$D/base.bin" "$W/a/f.bin"; fi
    (cd "$W/a" && "$L" add -q)
    (cd "$W/a" && exec "$L" serve --listen $PORT >"$W/serve.log" 2>&1) &
    SP=$!
    KEY=$(cd "$W/a" && "$L" share-key)
    echo "$KEY" | "$L" init -q --join - "$W/b"
    sync
    (cd "$W/b" && /usr/bin/time -f "%e %U %S" -o "$W/t.txt" "$L" --json sync $PORT > "$W/out.json")
    A=$(cut -d' ' -f14,15 /proc/$SP/stat)
    kill $SP; wait $SP 2>/dev/null || true
    if [ -n "${LEFT_BENCH_TREE:-}" ]; then diff -r "$W/a/t" "$W/b/t"; else cmp "$W/a/f.bin" "$W/b/f.bin"; fi
    read -r wall usr sys < "$W/t.txt"
    python3 - "$W/out.json" "$L" "$wall" "$usr" "$sys" "$A" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]}: wall {sys.argv[3]} s, B user {sys.argv[4]} s sys {sys.argv[5]} s, "
      f"fetch {d['fetch_seconds']:.3f} s, checkout {d['checkout_seconds']:.3f} s, A ticks {sys.argv[6]}")
PY
  done
done
