#!/usr/bin/env bash
# A/B comparison of `left add` of a changed 1 GiB file between left binaries, alternated: per
# mutation a-d, the share goes back to the base file (added, not timed), the mutated file is
# copied over it, `sync; sleep 1` lets the disk settle, and `left --json add` is timed.
# Prints: mutation, binary, wall, user, sys (s), bytes_new.
#
# With LEFT_BENCH_TREE=DIR (a folder of many files, e.g. /var/tmp/left-bench/many-100000 made by
# many_files.py), each round instead gives every binary a fresh store over a hard-linked copy of
# DIR and times its first `add`, then an unchanged rescan. Prints: tree, binary, wall, user, sys
# (s) of the first add, then the same for the rescan.
#
# Usage: benches/ab_add.sh ROUNDS LEFT_BINARY... (data and work folder as ab_initial_sync.sh)
set -euo pipefail
ROUNDS=$1; shift
D=${LEFT_BENCH_DATA:-/var/tmp/left-bench/e2e-1073741824}
W=${WORK:-/var/tmp/left-ab}
mkdir -p "$W"
if [ -n "${LEFT_BENCH_TREE:-}" ]; then
  for r in $(seq "$ROUNDS"); do
    for L in "$@"; do
      S="$W/tree"; rm -rf "$S"; mkdir -p "$S"; "$L" init -q "$S"; cp -al "$LEFT_BENCH_TREE" "$S/t"
      sync; sleep 1; cd "$S"
      /usr/bin/time -f "%e %U %S" -o "$W/t1.txt" "$L" add -q
      /usr/bin/time -f "%e %U %S" -o "$W/t2.txt" "$L" add -q
      echo "tree $L first $(cat "$W/t1.txt") rescan $(cat "$W/t2.txt")"
      cd "$W"
    done
  done
  exit 0
fi
n=0
for L in "$@"; do
  n=$((n + 1)); S="$W/add-$n"
  rm -rf "$S"; mkdir -p "$S"; "$L" init -q "$S"; cp "$D/base.bin" "$S/f.bin"; (cd "$S" && "$L" add -q)
done
for r in $(seq "$ROUNDS"); do
  for k in a b c d; do
    n=0
    for L in "$@"; do
      n=$((n + 1)); S="$W/add-$n"
      cd "$S"; cp "$D/base.bin" f.bin; "$L" add -q; cp "$D/mut_$k.bin" f.bin; sync; sleep 1
      /usr/bin/time -f "%e %U %S" -o "$W/t.txt" "$L" --json add > "$W/o.json"
      echo "$k $L $(cat "$W/t.txt") $(python3 -c "import json,sys;print(json.load(open(sys.argv[1]))['bytes_new'])" "$W/o.json")"
    done
  done
done
