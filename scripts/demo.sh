#!/usr/bin/env bash
# `make demo`: shows left on generated data in a temporary folder.
# Part 1, one share: snapshot a folder, change a little, snapshot again (only new chunks are stored),
# restore the old version byte for byte.
# Part 2, two peers on loopback: A serves the share, B joins it with A's share key and syncs; a change
# on A is added (through the running serve) and B's second sync moves only the delta.
# Part 3, three peers syncing automatically (`left serve --peer ...`): an add, an edit, a deletion
# and a concurrent edit of one file on two peers, each reaching all three; `left status` on the way.
# Leaves nothing behind (the serves are stopped, the folder removed) unless KEEP=1.
set -euo pipefail

LEFT="${LEFT:-target/release/left}"
[ -x "$LEFT" ] || { echo "demo: $LEFT not built (run make build)" >&2; exit 1; }
LEFT="$(cd "$(dirname "$LEFT")" && pwd)/$(basename "$LEFT")"
here="$(cd "$(dirname "$0")/.." && pwd)"
gen="$here/../shared/bench/gen.py"

work="$(mktemp -d /tmp/left-demo.XXXXXX)"
serve_pid=""
auto_pids=()
cleanup() {
  if [ -n "$serve_pid" ] && kill -0 "$serve_pid" 2>/dev/null; then
    kill -INT "$serve_pid" 2>/dev/null || true
    wait "$serve_pid" 2>/dev/null || true
  fi
  for p in "${auto_pids[@]}"; do
    kill -INT "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
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

# ---------------------------------------------------------------------------------------------
step "three peers that sync automatically: X, Y, Z, each given the other two (the seed's layout)"
key="$("$LEFT" share-key --store "$share/.left")"
ports=($(python3 -c 'import socket
s=[socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(" ".join(str(x.getsockname()[1]) for x in s))'))
names=(X Y Z)
for i in 0 1 2; do
  d="$work/${names[$i]}"
  printf '%s\n' "$key" | "$LEFT" init --join - "$d" >/dev/null
done
for i in 0 1 2; do
  d="$work/${names[$i]}"
  peers=()
  for j in 0 1 2; do [ "$j" = "$i" ] || peers+=(--peer "127.0.0.1:${ports[$j]}"); done
  printf '$ left serve --listen 127.0.0.1:%s %s --settle 0.3 --interval 2 &   # in %s\n' \
    "${ports[$i]}" "${peers[*]}" "${names[$i]}"
  (cd "$d" && exec "$LEFT" serve --listen "127.0.0.1:${ports[$i]}" "${peers[@]}" \
      --settle 0.3 --interval 2 --rescan 10 >"$work/${names[$i]}.out" 2>"$work/${names[$i]}.err") &
  auto_pids+=($!)
done
# Waits until all three are idle on one head (polling `left status --json`).
converge() {
  for _ in $(seq 1 600); do
    heads=""
    ok=1
    for n in "${names[@]}"; do
      st="$("$LEFT" status --json --store "$work/$n/.left" 2>/dev/null)" || { ok=0; break; }
      line="$(printf '%s' "$st" | python3 -c 'import json,sys
v=json.load(sys.stdin); print(v["head"], v["idle"])')"
      heads="$heads ${line% *}"
      [ "${line#* }" = "True" ] || ok=0
    done
    if [ "$ok" = 1 ] && [ "$(printf '%s\n' $heads | sort -u | wc -l)" = 1 ] && [ "${heads# }" != "None" ]; then
      return 0
    fi
    sleep 0.1
  done
  echo "demo: the three peers did not converge" >&2
  tail -n 5 "$work"/X.err "$work"/Y.err "$work"/Z.err >&2
  return 1
}
same3() {
  diff -r --exclude=.left "$work/X" "$work/Y" >/dev/null && diff -r --exclude=.left "$work/X" "$work/Z" >/dev/null \
    && echo "X, Y and Z hold the same files: $(cd "$work/X" && find . -path ./.left -prune -o -type f -print | sed 's|^./||' | sort | tr '\n' ' ')"
}

step "add a file on X: Y and Z get it"
echo "a note written on X" > "$work/X/note.txt"
converge && same3
run status --store "$work/Y/.left"

step "edit it on Y, add a folder on Z: all three get both"
echo "the note, edited on Y" > "$work/Y/note.txt"
mkdir -p "$work/Z/photos" && head -c 300000 /dev/urandom > "$work/Z/photos/cat.jpg"
converge && same3

step "delete the folder on X: it goes everywhere (and stays in the history)"
rm -r "$work/X/photos"
converge && same3

step "the same file edited on X and Z at once: both versions are kept, on all three"
echo "X's version" > "$work/X/note.txt"
echo "Z's version" > "$work/Z/note.txt"
converge && same3
for f in "$work"/Y/note*; do printf '  Y/%s: %s\n' "$(basename "$f")" "$(cat "$f")"; done

step "Y's history: snapshots from all three devices and the merges"
run log --store "$work/Y/.left" -n 8
run status --store "$work/Z/.left"

step "stop the three peers (Ctrl-C)"
for p in "${auto_pids[@]}"; do kill -INT "$p"; done
for p in "${auto_pids[@]}"; do wait "$p" || true; done
auto_pids=()
echo
echo "demo done"
