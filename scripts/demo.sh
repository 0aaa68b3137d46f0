#!/usr/bin/env bash
# `make demo`: shows left on generated data in a temporary folder.
# Snapshot a folder, change a little, snapshot again (only new chunks are stored), restore an old
# version byte for byte, verify the store. Leaves nothing behind unless KEEP=1.
set -euo pipefail

LEFT="${LEFT:-target/release/left}"
[ -x "$LEFT" ] || { echo "demo: $LEFT not built (run make build)" >&2; exit 1; }
LEFT="$(cd "$(dirname "$LEFT")" && pwd)/$(basename "$LEFT")"
here="$(cd "$(dirname "$0")/.." && pwd)"
gen="$here/../shared/bench/gen.py"

work="$(mktemp -d /tmp/left-demo.XXXXXX)"
[ "${KEEP:-0}" = 1 ] || trap 'rm -rf "$work"' EXIT
share="$work/share"
mkdir -p "$share/docs" "$share/empty"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ left %s\n' "$*"; "$LEFT" "$@"; }

step "a share with a 64 MiB mixed file, some text files, a symlink and an empty folder"
if [ -f "$gen" ]; then
  python3 "$gen" base "$share/data.bin" --size $((64 << 20)) --seed 1 >/dev/null
else
  head -c $((64 << 20)) /dev/urandom > "$share/data.bin"
fi
for i in $(seq 1 20); do seq 1 $((i * 500)) > "$share/docs/notes-$i.txt"; done
ln -s docs/notes-1.txt "$share/latest-notes"
cd "$share"
run init
run id

step "first snapshot"
run add -m "first"

step "nothing changed: no new snapshot, nothing re-read"
run add

step "change 1 MiB in the middle of the big file and add a copy of a text file"
python3 - "$share/data.bin" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    f.seek(32 << 20)
    f.write(os.urandom(1 << 20))
PY
cp docs/notes-20.txt docs/notes-20-copy.txt
run add -m "edit" --json
echo "(bytes_new: plain bytes of chunks the store did not have; the copy costs nothing)"

step "history"
run log
run ls head docs

step "restore the first snapshot elsewhere and compare"
first="$("$LEFT" log --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["snapshots"][-1]["id"])')"
run restore "$first" --to "$work/restored"
python3 - "$work/restored/data.bin" "$share/data.bin" <<'PY'
import sys
a = open(sys.argv[1], "rb").read(); b = open(sys.argv[2], "rb").read()
diff = sum(1 for i in range(0, len(a), 1 << 20) if a[i:i + (1 << 20)] != b[i:i + (1 << 20)])
print(f"restored first version: {len(a)} bytes, differs from today's file in {diff} MiB block(s)")
PY

step "verify every chunk and node"
run verify
echo
echo "demo done (work folder: $work)"
