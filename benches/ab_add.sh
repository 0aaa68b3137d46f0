#!/usr/bin/env bash
# A/B comparison of `left add` of a changed 1 GiB file between left binaries, alternated: per
# mutation a-d, the share goes back to the base file (added, not timed), the mutated file is
# copied over it, `sync; sleep 1` lets the disk settle, and `left --json add` is timed.
# Prints: mutation, binary, wall, user, sys (s), bytes_new.
#
# Usage: benches/ab_add.sh ROUNDS LEFT_BINARY... (data and work folder as ab_initial_sync.sh)
set -euo pipefail
ROUNDS=$1; shift
D=${LEFT_BENCH_DATA:-/var/tmp/left-bench/e2e-1073741824}
W=${WORK:-/var/tmp/left-ab}
mkdir -p "$W"
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
