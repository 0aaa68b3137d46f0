#!/usr/bin/env bash
# `make demo`: shows left on generated data in a temporary folder.
# Part 1, one share: snapshot a folder, change a little, snapshot again (only new chunks are stored),
# restore the old version byte for byte.
# Part 2, two peers on loopback: A serves the share, B joins it with A's share key and syncs; a change
# on A is added (through the running serve) and B's second sync moves only the delta.
# Leaves nothing behind (the serve is stopped, the folder removed) unless KEEP=1.
set -euo pipefail

LEFT="${LEFT:-target/release/left}"
[ -x "$LEFT" ] || { echo "demo: $LEFT not built (run make build)" >&2; exit 1; }
LEFT="$(cd "$(dirname "$LEFT")" && pwd)/$(basename "$LEFT")"
here="$(cd "$(dirname "$0")/.." && pwd)"
gen="$here/../shared/bench/gen.py"

work="$(mktemp -d /tmp/left-demo.XXXXXX)"
serve_pid=""
cleanup() {
  if [ -n "$serve_pid" ] && kill -0 "$serve_pid" 2>/dev/null; then
    kill -INT "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
  fi
  if [ "${KEEP:-0}" = 1 ]; then echo "demo: work folder kept: $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
share="$work/A"
peer="$work/B"
mkdir -p "$share/docs"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ left %s\n' "$*"; "$LEFT" "$@"; }
edit_mib() { # overwrite 1 MiB of FILE at offset N MiB with random bytes
  python3 -c 'import os,sys
with open(sys.argv[1], "r+b") as f:
    f.seek(int(sys.argv[2]) << 20); f.write(os.urandom(1 << 20))' "$1" "$2"
}

step "share A: a 64 MiB mixed file and some text files"
if [ -f "$gen" ]; then
  python3 "$gen" base "$share/data.bin" --size $((64 << 20)) --seed 1 >/dev/null
else
  head -c $((64 << 20)) /dev/urandom > "$share/data.bin"
fi
for i in $(seq 1 20); do seq 1 $((i * 500)) > "$share/docs/notes-$i.txt"; done
cd "$share"
run init
run add -m "first"

step "change 1 MiB of the big file: the next snapshot stores only the new chunks"
edit_mib "$share/data.bin" 32
run add -m "edit" --json
first="$("$LEFT" log --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshots"][-1]["id"])')"
run restore "$first" --to "$work/restored" >/dev/null
printf '$ left restore <first> --to restored   # then compare: '
cmp -s "$work/restored/data.bin" "$share/data.bin" && echo "same as today's file?!" \
  || echo "restored the first version (differs from today's file, as it should)"

step "peer A serves the share on loopback (an OS-chosen UDP port)"
printf '$ left serve --listen 127.0.0.1:0 --json &\n'
"$LEFT" serve --listen 127.0.0.1:0 --json >"$work/serve.out" 2>"$work/serve.err" &
serve_pid=$!
addr=""
for _ in $(seq 1 300); do
  if [ -s "$work/serve.out" ]; then
    addr="$(head -n 1 "$work/serve.out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["addr"])')"
    break
  fi
  kill -0 "$serve_pid" 2>/dev/null || break
  sleep 0.1
done
if [ -z "$addr" ]; then
  echo "demo: left serve did not start listening:" >&2
  cat "$work/serve.err" >&2
  exit 1
fi
head -n 1 "$work/serve.out"

step "peer B joins with A's share key (read from stdin, so it never shows in the process list)"
printf '$ left share-key | left init --join - %s\n' "$peer"
"$LEFT" share-key | "$LEFT" init --join - "$peer"
cd "$peer"

step "B syncs from A: fetches every chunk it lacks and checks the files out"
run sync "$addr"
diff -r --exclude=.left "$share" "$peer" >/dev/null && echo "B's folder matches A's"

step "edit on A (1 MiB of the big file, one new text file) and add it through the running serve"
edit_mib "$share/data.bin" 8
seq 1 3000 > "$share/docs/new.txt"
(cd "$share" && run add -m "edit on A")

step "B syncs again: only the delta crosses the wire"
run sync "$addr"
echo "(the share holds 64.5 MiB; about 1.1 MiB of it changed)"
diff -r --exclude=.left "$share" "$peer" >/dev/null && echo "B's folder matches A's again"

step "B's history: the snapshots it fetched from A"
run log

step "stop A's serve with Ctrl-C (SIGINT)"
kill -INT "$serve_pid"
status=0
wait "$serve_pid" || status=$?
serve_pid=""
echo "left serve exited with status $status"
echo
echo "demo done"
