#!/usr/bin/env python3
"""The 1 GB update benchmark (issue 4): `left serve` / `left sync` against an rsync daemon.

Two peers on loopback, in a temporary folder on the same disk as the data (default /var/tmp):
A is a share holding the 1 GiB mixed file from ../shared/bench/gen.py, B a share joined to it with
A's share key. In one invocation, on a warm page cache:

  * physical floor: `cat FILE >/dev/null` and `cp FILE DEST` of the base file
  * initial sync: A runs `left add` (timed, reported apart), then `left serve`; B runs `left sync A`
    (timed). rsync: a client pulls the same file from a loopback `rsync --daemon` (delta mode: rsync's
    defaults plus -a and --no-whole-file, no --inplace) into an empty folder.
  * for each mutation a-d: the mutated file replaces A's file (and the rsync source's) outside the
    timed region; left is timed from the start of `left add` on A until `left sync A` on B has exited
    0; rsync from its client's start to its exit. Each side's file is then checked against the
    mutation's hash (outside the timed region).
  * bytes on the wire: left's `sync --json` (bytes_sent, bytes_received: UDP payload bytes; and
    payload_bytes_received: the node and chunk bytes), rsync's `--stats` (client's Total bytes sent /
    received).
  * peak RSS: B's `left sync` and A's `left add` from wait4; A's `left serve` from /proc VmHWM (reset
    before each step through /proc/PID/clear_refs where the kernel allows it); the rsync client from
    wait4 and the rsync daemon (restarted per transfer, so the figure is per transfer) from wait4 on
    the daemon, which covers the connection child it reaped.

Left and rsync steps alternate (left first in odd runs, rsync first in even ones); --runs N repeats the
whole sequence on fresh shares and reports medians. Prints progress on stderr and exactly one JSON
object on stdout, with the issue's floors checked as booleans (floors_met). Python 3 standard library
only, except --plot, which uses matplotlib (installed with pip when missing). rsync is installed with
apt-get when missing.

  python3 benches/update_bench.py [--left PATH] [--data DIR] [--work DIR] [--runs N]
                                   [--encryption on|off] [--quick] [--plot PNG]
"""
import argparse
import hashlib
import json
import os
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from benchdata import default_gen, ensure_data, place

MiB = 1 << 20
GiB = 1 << 30
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
KINDS = "abcd"
FILE = "data.bin"

# Floors from issue 4 (2 cores, warm page cache, loopback).
FLOOR_PAYLOAD = {"a": 1.5 * MiB, "b": 1.5 * MiB, "c": 17 * MiB, "d": 8 * MiB}
FLOOR_WALL_RATIO = 0.5
FLOOR_RSS = 256 * MiB


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def die(msg):
    log(f"update_bench: {msg}")
    sys.exit(1)


def default_left():
    target = os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")
    return os.path.join(target, "release", "left")


# ---------------------------------------------------------------------------------------------------
# Processes


class Result:
    """A finished process: wall seconds, exit code, stdout, stderr, peak RSS (bytes, from wait4)."""

    def __init__(self, argv, seconds, code, out, err, rss):
        self.argv, self.seconds, self.code, self.out, self.err, self.rss = argv, seconds, code, out, err, rss

    def json(self):
        try:
            return json.loads(self.out)
        except ValueError:
            die(f"{' '.join(self.argv)} printed no JSON object:\n{self.out}\n{self.err}")

    def check(self, what):
        if self.code != 0:
            die(f"{what}: {' '.join(self.argv)} exited {self.code}:\n{self.err.strip()}")
        return self


# GNU time measures a child's peak RSS without this process's own: wait4 alone reports at least the
# RSS this (Python) process had when it started the child, since Linux carries the parent's high-water
# mark into the child at exec. Without GNU time, wait4's figure is used (a floor of ~15-20 MiB).
GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None


def run(argv, cwd=None, stdin_bytes=None, timeout=600.0):
    """Runs argv to completion; returns a Result. Kills it after `timeout` seconds."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, \
            tempfile.NamedTemporaryFile("r", prefix="left-bench-rss.") as rss_file:
        stdin = subprocess.PIPE if stdin_bytes is not None else subprocess.DEVNULL
        full = ([GNU_TIME, "-f", "%M", "-o", rss_file.name, "--"] if GNU_TIME else []) + list(argv)
        start = time.perf_counter()
        proc = subprocess.Popen(full, cwd=cwd, stdout=out, stderr=err, stdin=stdin)
        if stdin_bytes is not None:
            proc.stdin.write(stdin_bytes)
            proc.stdin.close()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        seconds = time.perf_counter() - start
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        text_err = err.read().decode("utf-8", "replace")
        if seconds >= timeout:
            text_err += f"\n(killed after {timeout:.0f} s)"
        # ru_maxrss is in KiB on Linux; wait4 reports the larger of the process and its reaped children.
        rss = usage.ru_maxrss * 1024
        if GNU_TIME:
            lines = rss_file.read().split()
            rss = int(lines[-1]) * 1024 if lines and lines[-1].isdigit() else None
        return Result(argv, seconds, code, out.read().decode("utf-8", "replace"), text_err, rss)


def timed_shell(cmd):
    """Times a shell command after writing back earlier dirty pages; returns seconds."""
    os.sync()
    start = time.perf_counter()
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def proc_status(pid, field):
    """A field of /proc/PID/status in bytes (VmHWM, VmRSS), or None."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_hwm(pid):
    """Resets the process's VmHWM to its current RSS (Linux clear_refs 5); True if the kernel did it."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def stop(proc, sig=signal.SIGTERM, timeout=30.0):
    """Signals a Popen process and reaps it; returns (exit code, peak RSS bytes from wait4)."""
    if proc.returncode is None and sig is not None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except ChildProcessError:
        return proc.returncode, None
    finally:
        timer.cancel()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss * 1024


def children(pid):
    """The pids of a process's children (Linux /proc), as ints."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------------
# Data


class Hasher:
    """BLAKE3 through b3sum when installed, else BLAKE2b in Python."""

    def __init__(self):
        self.b3sum = shutil.which("b3sum")
        self.name = "blake3 (b3sum)" if self.b3sum else "blake2b (python)"
        self.cache = {}

    def __call__(self, path):
        if self.b3sum:
            out = subprocess.run([self.b3sum, "--no-names", path], check=True, capture_output=True, text=True)
            return out.stdout.strip()
        h = hashlib.blake2b()
        with open(path, "rb") as f:
            while True:
                b = f.read(4 * MiB)
                if not b:
                    return h.hexdigest()
                h.update(b)

    def source(self, path):
        if path not in self.cache:
            self.cache[path] = self(path)
        return self.cache[path]


def check_copy(hasher, folder, want_hash, what):
    """The folder (less .left) holds exactly FILE with the wanted hash; dies otherwise."""
    names = sorted(n for n in os.listdir(folder) if n != ".left")
    if names != [FILE]:
        die(f"{what}: {folder} holds {names}, expected [{FILE!r}]")
    got = hasher(os.path.join(folder, FILE))
    if got != want_hash:
        die(f"{what}: {folder}/{FILE} has hash {got}, expected {want_hash}")


# ---------------------------------------------------------------------------------------------------
# rsync


def ensure_tools():
    """Installs rsync (the baseline) and GNU time (peak RSS) with apt-get when missing; returns rsync's
    version line."""
    missing = [pkg for pkg, present in (("rsync", shutil.which("rsync")),
                                        ("time", os.access("/usr/bin/time", os.X_OK))) if not present]
    if missing:
        log(f"installing {' '.join(missing)} with apt-get ...")
        sudo = [] if os.geteuid() == 0 else ["sudo"]
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        install = sudo + ["apt-get", "install", "-y", "-qq"] + missing
        if subprocess.run(install, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode:
            subprocess.run(sudo + ["apt-get", "update", "-qq"], env=env, check=True, stdout=subprocess.DEVNULL)
            subprocess.run(install, env=env, check=True, stdout=subprocess.DEVNULL)
        if shutil.which("rsync") is None:
            die("rsync could not be installed")
        global GNU_TIME
        GNU_TIME = "/usr/bin/time" if os.access("/usr/bin/time", os.X_OK) else None
    out = subprocess.run(["rsync", "--version"], capture_output=True, text=True, check=True).stdout
    return out.splitlines()[0].strip()


def parse_stats(text):
    """rsync --stats figures (client's view) as ints."""
    want = {"Total bytes sent": "bytes_sent", "Total bytes received": "bytes_received",
            "Literal data": "literal_data", "Matched data": "matched_data",
            "Total transferred file size": "transferred_file_size"}
    res = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in want:
            num = value.strip().split()[0].replace(",", "")
            try:
                res[want[key.strip()]] = int(num)
            except ValueError:
                pass
    if "bytes_sent" not in res or "bytes_received" not in res:
        die(f"cannot read rsync --stats output:\n{text}")
    return res


class RsyncDaemon:
    """A loopback rsync daemon serving one read-only module; started fresh for each transfer, so its
    peak RSS (the daemon's and the connection child's it reaped) is per transfer."""

    def __init__(self, work, module_path):
        self.work = work
        self.module_path = module_path
        self.proc = None  # GNU time running the daemon (or the daemon itself without GNU time)
        self.pid = None  # the daemon
        self.port = None
        self.rss_file = os.path.join(work, "rsyncd.rss")

    def start(self):
        self.port = free_port()
        conf = os.path.join(self.work, "rsyncd.conf")
        ids = "uid = 0\ngid = 0\n" if os.geteuid() == 0 else ""
        with open(conf, "w") as f:
            f.write(f"pid file = {self.work}/rsyncd.pid\nlog file = {self.work}/rsyncd.log\n"
                    f"use chroot = no\n[bench]\n  path = {self.module_path}\n  read only = yes\n"
                    f"  use chroot = no\n{ids}")
        for stale in (os.path.join(self.work, "rsyncd.pid"), self.rss_file):
            if os.path.exists(stale):
                os.unlink(stale)
        argv = ["rsync", "--daemon", "--no-detach", f"--config={conf}", f"--port={self.port}",
                "--address=127.0.0.1"]
        if GNU_TIME:
            argv = [GNU_TIME, "-f", "%M", "-o", self.rss_file, "--"] + argv
        with open(os.path.join(self.work, "rsyncd.stderr"), "ab") as err:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                die(f"rsync daemon exited {self.proc.returncode} (see {self.work}/rsyncd.stderr)")
            if self.pid is None:
                self.pid = (children(self.proc.pid) or [None])[0] if GNU_TIME else self.proc.pid
            try:
                if self.pid is not None:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                die("rsync daemon did not start listening within 10 s")
            time.sleep(0.02)
        # The probe connection above made the daemon fork a child that exits at once; let it be reaped.
        self.wait_children()

    def wait_children(self, timeout=10.0):
        deadline = time.monotonic() + timeout
        while children(self.pid) and time.monotonic() < deadline:
            time.sleep(0.005)

    def stop(self):
        """Stops the daemon once its connection children are reaped; returns its peak RSS (bytes)."""
        self.wait_children()
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        _, rss = stop(self.proc, sig=None)
        self.proc = self.pid = None
        if GNU_TIME:
            try:
                with open(self.rss_file) as f:
                    last = f.read().split()[-1]
                rss = int(last) * 1024
            except (OSError, IndexError, ValueError):
                rss = None
        return rss

    def url(self):
        return f"rsync://127.0.0.1:{self.port}/bench/"


def rsync_step(daemon, dest, timeout):
    """One client pull into dest through a fresh daemon; returns the step's figures."""
    daemon.start()
    os.sync()
    res = run(["rsync", "-a", "--no-whole-file", "--stats", daemon.url(), dest + "/"], timeout=timeout)
    rss_daemon = daemon.stop()
    res.check("rsync pull")
    stats = parse_stats(res.out)
    return {"seconds": res.seconds, "bytes_sent": stats["bytes_sent"],
            "bytes_received": stats["bytes_received"],
            "literal_data": stats.get("literal_data"), "matched_data": stats.get("matched_data"),
            "rss": res.rss, "rss_daemon": rss_daemon}


# ---------------------------------------------------------------------------------------------------
# left


def encryption_arg(value):
    """The --encryption option for serve and sync: nothing for "on" (left's default)."""
    return [] if value == "on" else [f"--encryption={value}"]


class Serve:
    """`left serve` on A, listening on a loopback port chosen by the kernel."""

    def __init__(self, left, store, share, work, encryption):
        self.left, self.store, self.share, self.work, self.encryption = left, store, share, work, encryption
        self.proc = None
        self.addr = None
        self.lines = []
        self.hwm_resets = True

    def start(self, timeout=60.0):
        argv = [self.left, "--store", self.store, "--json", "serve", "--listen", "127.0.0.1:0"] \
            + encryption_arg(self.encryption)
        self.proc = subprocess.Popen(argv, cwd=self.share, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=open(os.path.join(self.work, "serve.stderr"), "ab"))
        deadline = time.monotonic() + timeout
        line = b""
        while not line.endswith(b"\n"):
            left_s = deadline - time.monotonic()
            if left_s <= 0 or not select.select([self.proc.stdout], [], [], left_s)[0]:
                self.proc.kill()
                die(f"left serve printed no listening line within {timeout:.0f} s "
                    f"(see {self.work}/serve.stderr)")
            b = os.read(self.proc.stdout.fileno(), 4096)
            if not b:
                code = self.proc.wait()
                with open(os.path.join(self.work, "serve.stderr"), errors="replace") as f:
                    die(f"left serve exited {code} before listening:\n{f.read().strip()}")
            line += b
        first, _, rest = line.partition(b"\n")
        try:
            event = json.loads(first)
            self.addr = event["addr"]
        except (ValueError, KeyError, TypeError):
            die(f"left serve's first line is not a listening event: {first!r}")
        self.lines = [event]
        # Keep draining stdout so serve never blocks on a full pipe.
        threading.Thread(target=self._drain, args=(rest,), daemon=True).start()

    def _drain(self, rest):
        buf = rest
        fd = self.proc.stdout.fileno()
        while True:
            try:
                b = os.read(fd, 65536)
            except OSError:
                return
            if not b:
                return
            buf += b
            while b"\n" in buf:
                line, _, buf = buf.partition(b"\n")
                try:
                    self.lines.append(json.loads(line))
                except ValueError:
                    pass

    def reset_peak(self):
        self.hwm_resets = reset_hwm(self.proc.pid) and self.hwm_resets

    def peak(self):
        return proc_status(self.proc.pid, "VmHWM")

    def stop(self):
        """SIGINT (Ctrl-C) and reap; returns the exit code."""
        code, _ = stop(self.proc, signal.SIGINT)
        self.proc = None
        return code


class LeftPair:
    """Peers A (serving) and B (joined) for one run."""

    def __init__(self, left, work, encryption, timeout):
        self.left, self.work, self.encryption, self.timeout = left, work, encryption, timeout
        self.a = os.path.join(work, "A")
        self.b = os.path.join(work, "B")
        self.store_a = os.path.join(self.a, ".left")
        self.store_b = os.path.join(self.b, ".left")
        self.serve = Serve(left, self.store_a, self.a, work, encryption)
        self.add_mode = "control socket"
        self.notes = []

    def cmd(self, store, *args, cwd=None, stdin_bytes=None, json_out=True):
        argv = [self.left, "--store", store] + (["--json"] if json_out else []) + list(args)
        return run(argv, cwd=cwd, stdin_bytes=stdin_bytes, timeout=self.timeout)

    def setup(self, base):
        os.makedirs(self.a)
        os.makedirs(self.b)
        self.cmd(self.store_a, "init", self.a).check("init A")
        place(base, os.path.join(self.a, FILE))
        os.sync()
        add = self.cmd(self.store_a, "add", "-m", "base", cwd=self.a).check("add base on A")
        key = self.cmd(self.store_a, "share-key", cwd=self.a, json_out=False).check("share-key").out.strip()
        if not key:
            die("left share-key printed nothing")
        self.cmd(self.store_b, "init", "--join", "-", self.b, stdin_bytes=(key + "\n").encode()).check("join B")
        self.serve.start()
        return {"seconds": add.seconds, "rss": add.rss, "json": add.json()}

    def sync(self):
        argv = [self.left, "--store", self.store_b, "--json", "sync", self.serve.addr] \
            + encryption_arg(self.encryption)
        return run(argv, cwd=self.b, timeout=self.timeout)

    def initial(self):
        self.serve.reset_peak()
        os.sync()
        res = self.sync().check("initial left sync")
        return self._figures(res.seconds, res, None)

    def mutation(self, k):
        self.serve.reset_peak()
        os.sync()
        start = time.perf_counter()
        add = self.cmd(self.store_a, "add", "-m", f"mutation {k}", cwd=self.a)
        if add.code != 0 and self.add_mode == "control socket" and _looks_locked(add.err):
            # `left add` cannot reach the running serve: fall back to stop serve, add, restart serve
            # (not timed), and say so in the result.
            self.add_mode = "serve stopped for add"
            self.notes.append(f"left add beside a running serve failed ({add.err.strip()}); "
                              "serve is stopped for each add and restarted before the sync (not timed)")
        if self.add_mode != "control socket":
            self.serve.stop()
            add = self.cmd(self.store_a, "add", "-m", f"mutation {k}", cwd=self.a).check(f"add {k} on A")
            self.serve.start()
            os.sync()
            sync = self.sync().check(f"left sync of mutation {k}")
            total = add.seconds + sync.seconds
        else:
            add.check(f"add {k} on A")
            sync = self.sync()
            total = time.perf_counter() - start
            sync.check(f"left sync of mutation {k}")
        return self._figures(total, sync, add)

    def _figures(self, total, sync, add):
        js = sync.json()
        if js.get("diverged"):
            die(f"left sync reported diverged: {js}")
        serve_peak = self.serve.peak()
        peaks = [x for x in (serve_peak, add.rss if add else None) if x is not None]
        rss_a = max(peaks) if peaks else None
        fig = {"seconds": total,
               "sync_seconds": sync.seconds,
               "add_seconds": add.seconds if add else None,
               "bytes_sent": js.get("bytes_sent"), "bytes_received": js.get("bytes_received"),
               "payload_bytes_received": js.get("payload_bytes_received"),
               "chunks_fetched": js.get("chunks_fetched"), "nodes_fetched": js.get("nodes_fetched"),
               "sync_reported_seconds": js.get("seconds"),
               "fetch_seconds": js.get("fetch_seconds"), "checkout_seconds": js.get("checkout_seconds"),
               "rss_a": rss_a, "rss_serve": serve_peak, "rss_add": add.rss if add else None,
               "rss_b": sync.rss, "sync": js}
        if add is not None:
            aj = add.json()
            fig["add"] = {k: aj.get(k) for k in ("bytes_read", "bytes_new", "bytes_stored", "snapshot")}
        return fig

    def close(self):
        if self.serve.proc is not None:
            code = self.serve.stop()
            if code != 0:
                self.notes.append(f"left serve exited {code} on SIGINT (expected 0)")
            return code
        return None


def _looks_locked(err):
    e = err.lower()
    return "lock" in e or "another left command" in e or "control socket" in e


# ---------------------------------------------------------------------------------------------------
# One run


def one_run(i, args, data, hasher, size):
    work = tempfile.mkdtemp(prefix=f"left-update.{i}.", dir=args.work)
    log(f"run {i + 1}/{args.runs}: work folder {work}")
    notes = []
    res = {"initial": {}, "mutations": {k: {} for k in KINDS}, "floor": {}}
    pair = None
    daemon = None
    try:
        base = os.path.join(data, "base.bin")
        # Physical floor.
        dest = os.path.join(work, "cp-dest.bin")
        res["floor"]["cat"] = timed_shell(f"cat '{base}' >/dev/null")
        res["floor"]["cp"] = timed_shell(f"cp '{base}' '{dest}'")
        os.unlink(dest)

        left_first = (i % 2 == 0)
        rs_src = os.path.join(work, "rsync-A")
        rs_dst = os.path.join(work, "rsync-B")
        do_left = not args.skip_left
        do_rsync = not args.skip_rsync
        if do_rsync:
            os.makedirs(rs_src)
            os.makedirs(rs_dst)
            place(base, os.path.join(rs_src, FILE))
            daemon = RsyncDaemon(work, rs_src)
        if do_left:
            pair = LeftPair(args.left, work, args.encryption, args.timeout)
            log("  left: init, add base, serve, join")
            res["add_base"] = pair.setup(base)
            log(f"  left add base: {res['add_base']['seconds']:.2f} s")

        def left_step(k):
            if k is None:
                r = pair.initial()
                check_copy(hasher, pair.b, hasher.source(base), "left initial sync")
            else:
                src = os.path.join(data, f"mut_{k}.bin")
                place(src, os.path.join(pair.a, FILE))
                r = pair.mutation(k)
                check_copy(hasher, pair.b, hasher.source(src), f"left sync of mutation {k}")
            fc = "" if r["fetch_seconds"] is None else \
                f": fetch {r['fetch_seconds']:.3f} s, checkout {r['checkout_seconds'] or 0:.3f} s"
            log(f"  left  {k or 'initial'}: {r['seconds']:.3f} s (add {r['add_seconds'] or 0:.3f} s, "
                f"sync {r['sync_seconds']:.3f} s{fc}), payload {fmt_bytes(r['payload_bytes_received'])}, "
                f"UDP {fmt_bytes(r['bytes_received'])} in / {fmt_bytes(r['bytes_sent'])} out, "
                f"RSS A {fmt_bytes(r['rss_a'])} B {fmt_bytes(r['rss_b'])}")
            return r

        def rsync_step_k(k):
            src = base if k is None else os.path.join(data, f"mut_{k}.bin")
            if k is not None:
                place(src, os.path.join(rs_src, FILE))
            r = rsync_step(daemon, rs_dst, args.timeout)
            check_copy(hasher, rs_dst, hasher.source(src), f"rsync {k or 'initial'}")
            log(f"  rsync {k or 'initial'}: {r['seconds']:.3f} s, {fmt_bytes(r['bytes_received'])} in / "
                f"{fmt_bytes(r['bytes_sent'])} out, RSS client {fmt_bytes(r['rss'])} "
                f"daemon {fmt_bytes(r['rss_daemon'])}")
            return r

        for k in [None] + list(KINDS):
            slot = res["initial"] if k is None else res["mutations"][k]
            order = [("left", left_step, do_left), ("rsync", rsync_step_k, do_rsync)]
            if not left_first:
                order.reverse()
            for name, fn, enabled in order:
                if enabled:
                    slot[name] = fn(k)
        if pair is not None:
            code = pair.close()
            res["serve_exit"] = code
            res["add_mode"] = pair.add_mode
            res["hwm_reset"] = pair.serve.hwm_resets
            notes += pair.notes
    finally:
        if pair is not None and pair.serve.proc is not None:
            stop(pair.serve.proc, signal.SIGKILL)
        if daemon is not None and daemon.proc is not None:
            try:
                os.kill(daemon.pid or daemon.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            stop(daemon.proc, signal.SIGKILL)
        if args.keep:
            log(f"  work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    res["notes"] = notes
    return res


# ---------------------------------------------------------------------------------------------------
# Summary


def fmt_bytes(n):
    if n is None:
        return "?"
    if n >= GiB:
        return f"{n / GiB:.2f} GiB"
    if n >= MiB:
        return f"{n / MiB:.2f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n} B"


def median_of(runs, get):
    vals = [v for v in (get(r) for r in runs) if v is not None]
    if not vals:
        return None
    m = statistics.median(vals)
    return round(m, 4) if isinstance(m, float) else int(m)


def max_of(runs, get):
    vals = [v for v in (get(r) for r in runs) if v is not None]
    return max(vals) if vals else None


LEFT_KEYS = ["seconds", "add_seconds", "sync_seconds", "fetch_seconds", "checkout_seconds", "bytes_sent", "bytes_received",
             "payload_bytes_received", "chunks_fetched", "nodes_fetched", "rss_a", "rss_serve",
             "rss_add", "rss_b"]
RSYNC_KEYS = ["seconds", "bytes_sent", "bytes_received", "literal_data", "matched_data", "rss", "rss_daemon"]


def summarise(runs, size):
    def side(get_slot, name, keys):
        slots = [s for s in (get_slot(r).get(name) for r in runs) if s]
        if not slots:
            return None
        out = {k: median_of(slots, lambda s, k=k: s.get(k)) for k in keys}
        for k in keys:
            if k.startswith("rss"):
                out[k] = max_of(slots, lambda s, k=k: s.get(k))  # peaks: the worst run, not the median
        out["runs_seconds"] = [round(s["seconds"], 4) for s in slots]
        return out

    summary = {}
    for k in [None] + list(KINDS):
        get = (lambda r: r["initial"]) if k is None else (lambda r, k=k: r["mutations"][k])
        entry = {"left": side(get, "left", LEFT_KEYS), "rsync": side(get, "rsync", RSYNC_KEYS)}
        if entry["left"] and entry["rsync"]:
            entry["ratio_left_rsync_seconds"] = round(entry["left"]["seconds"] / entry["rsync"]["seconds"], 3)
        else:
            entry["ratio_left_rsync_seconds"] = None
        if k is None:
            for s in ("left", "rsync"):
                if entry[s]:
                    entry[s]["mb_per_s"] = round(size / entry[s]["seconds"] / 1e6, 1)
        summary[k or "initial"] = entry
    return summary


def floors_met(summary, floor):
    f = {}
    muts = {k: summary[k] for k in KINDS}
    for k in KINDS:
        lft = muts[k]["left"]
        f[f"payload_{k}"] = None if lft is None or lft["payload_bytes_received"] is None \
            else lft["payload_bytes_received"] <= FLOOR_PAYLOAD[k]
    for k in KINDS:
        r = muts[k]["ratio_left_rsync_seconds"]
        f[f"wall_{k}"] = None if r is None else r <= FLOOR_WALL_RATIO
    init = summary["initial"]
    f["initial_throughput"] = None if init["ratio_left_rsync_seconds"] is None \
        else init["ratio_left_rsync_seconds"] <= 1.0
    rss_a = [e["left"]["rss_a"] for e in summary.values() if e["left"] and e["left"]["rss_a"]]
    rss_b = [e["left"]["rss_b"] for e in summary.values() if e["left"] and e["left"]["rss_b"]]
    f["rss_a"] = max(rss_a) <= FLOOR_RSS if rss_a else None
    f["rss_b"] = max(rss_b) <= FLOOR_RSS if rss_b else None
    # None when some figure is missing (e.g. a side skipped), else whether every floor is met.
    f["all"] = None if any(v is None for v in f.values()) else all(f.values())
    return f


def print_table(result):
    s = result["summary"]
    log(f"\nupdate benchmark, {result['size'] / MiB:.0f} MiB, {result['runs']} run(s), "
        f"encryption {result['encryption']}{' (quick)' if result['quick'] else ''}; medians; "
        f"load average {result['loadavg_start'][0]:.2f} before, {result['loadavg_end'][0]:.2f} after")
    fl = result["floor"]
    log(f"  floor: cat {fl['cat']['seconds']:.3f} s ({fl['cat']['mb_per_s']:.0f} MB/s), "
        f"cp {fl['cp']['seconds']:.3f} s ({fl['cp']['mb_per_s']:.0f} MB/s)")
    if result.get("add_base"):
        ab = result["add_base"]
        log(f"  left add of the base on A (not in the sync time): {ab['seconds']:.3f} s, RSS {fmt_bytes(ab['rss'])}")
    log(f"  {'step':<8} {'left s':>8} {'rsync s':>8} {'ratio':>6}  {'left payload':>12} {'left UDP in':>12} "
        f"{'rsync in':>12} {'RSS A':>10} {'RSS B':>10} {'rsync RSS':>10}")
    for name, e in s.items():
        lft, rs = e["left"] or {}, e["rsync"] or {}
        def g(d, k, f=lambda x: f"{x:.3f}"):
            v = d.get(k)
            return "-" if v is None else f(v)
        log(f"  {name:<8} {g(lft, 'seconds'):>8} {g(rs, 'seconds'):>8} "
            f"{g(e, 'ratio_left_rsync_seconds', lambda x: f'{x:.2f}'):>6}  "
            f"{g(lft, 'payload_bytes_received', fmt_bytes):>12} {g(lft, 'bytes_received', fmt_bytes):>12} "
            f"{g(rs, 'bytes_received', fmt_bytes):>12} {g(lft, 'rss_a', fmt_bytes):>10} "
            f"{g(lft, 'rss_b', fmt_bytes):>10} {g(rs, 'rss', fmt_bytes):>10}")
    log("  floors: " + ", ".join(f"{k}={'-' if v is None else ('ok' if v else 'MISSED')}"
                                 for k, v in result["floors_met"].items()))
    for n in result["notes"]:
        log(f"  note: {n}")


def ensure_matplotlib():
    # Only looked up, not imported: a child's wait4 peak RSS counts this process's RSS at the fork, so
    # this process stays small until the measurements are done.
    import importlib.util
    if importlib.util.find_spec("matplotlib") is not None:
        return
    log("matplotlib is missing: installing it with pip ...")
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "matplotlib"])
    if r.returncode != 0:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--break-system-packages",
                        "matplotlib"], check=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--left", default=default_left(), help="left binary (default: %(default)s)")
    ap.add_argument("--data", help="folder with base.bin and mut_{a..d}.bin, generated when missing "
                                   "(default: /var/tmp/left-bench/e2e-SIZE)")
    ap.add_argument("--size", type=int, default=GiB, help="base file size in bytes (default 1 GiB)")
    ap.add_argument("--quick", action="store_true", help="small CI-sized run (64 MiB base, one run)")
    ap.add_argument("--gen", default=default_gen(REPO),
                    help="path of gen.py (default: $LEFT_BENCH_GEN, else ../shared/bench/gen.py beside this repo or beside the one it was cloned from)")
    ap.add_argument("--work", default="/var/tmp",
                    help="parent of the temporary peers' folders; keep it on the data's disk (default: %(default)s)")
    ap.add_argument("--runs", type=int, default=None, help="repeat the whole sequence N times and report "
                                                           "medians (default 3, 1 with --quick)")
    ap.add_argument("--encryption", choices=["on", "off"], default="on", help="left's rdt encryption (default on)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds before one command is killed "
                                                                "(default 600, 120 with --quick)")
    ap.add_argument("--plot", metavar="PNG", help="write the plot (needs matplotlib; installed with pip if missing)")
    ap.add_argument("--keep", action="store_true", help="keep the work folders")
    ap.add_argument("--skip-left", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--skip-rsync", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.size = 64 * MiB
    args.runs = args.runs or (1 if args.quick else 3)
    args.timeout = args.timeout or (120.0 if args.quick else 600.0)
    if args.runs < 1:
        die("--runs must be at least 1")
    args.left = os.path.abspath(args.left)
    if not args.skip_left and not os.access(args.left, os.X_OK):
        die(f"no left binary at {args.left} (build it: cargo build --release --bin left)")
    if args.plot:
        ensure_matplotlib()
    rsync_version = ensure_tools()
    data = args.data or f"/var/tmp/left-bench/e2e-{args.size}"
    generated = ensure_data(data, args.size, os.path.abspath(args.gen))
    size = os.path.getsize(os.path.join(data, "base.bin"))
    os.makedirs(args.work, exist_ok=True)
    if os.stat(args.work).st_dev != os.stat(data).st_dev:
        log(f"note: {args.work} and {data} are on different file systems; placing files will copy them")

    hasher = Hasher()
    # Warm the page cache for every input and hash each once (outside every timed region).
    for name in ["base.bin"] + [f"mut_{k}.bin" for k in KINDS]:
        path = os.path.join(data, name)
        timed_shell(f"cat '{path}' >/dev/null")
        hasher.source(path)

    load_start = os.getloadavg()
    runs = [one_run(i, args, data, hasher, size) for i in range(args.runs)]
    load_end = os.getloadavg()

    floor = {}
    for tool in ("cat", "cp"):
        secs = statistics.median(r["floor"][tool] for r in runs)
        floor[tool] = {"seconds": round(secs, 4), "mb_per_s": round(size / secs / 1e6, 1)}
    summary = summarise(runs, size)
    notes = sorted({n for r in runs for n in r["notes"]})
    if runs[0].get("hwm_reset") is False:
        notes.append("could not reset left serve's VmHWM between steps: rss_serve is the peak since serve started")
    if GNU_TIME:
        notes.append("peak RSS of left add/sync and the rsync client and daemon: GNU time (%M, wait4 of its "
                     "child; the daemon's figure covers the connection child it reaped; one daemon per "
                     "transfer); left serve: /proc VmHWM")
    else:
        notes.append("GNU time is missing: peak RSS from wait4, which is at least this Python process's "
                     "RSS when it started the child (a floor of ~15-20 MiB)")
    add_base = None
    if "add_base" in runs[0]:
        add_base = {"seconds": median_of(runs, lambda r: r["add_base"]["seconds"]),
                    "rss": max_of(runs, lambda r: r["add_base"]["rss"]),
                    "json": runs[0]["add_base"]["json"]}
    result = {
        "bench": "update", "size": size, "quick": args.quick, "runs": args.runs,
        "encryption": args.encryption, "cpus": os.cpu_count(),
        # Other work on the machine skews every figure (both tools use both cores): look here first.
        "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in load_end], "data": data, "generated": generated,
        "hash": hasher.name, "rsync_version": rsync_version,
        "rsync_options": "-a --no-whole-file --stats (daemon on 127.0.0.1)",
        "add_mode": runs[0].get("add_mode"),
        "floor": floor, "add_base": add_base, "summary": summary,
        "floors_met": floors_met(summary, floor), "notes": notes,
        "per_run": [{"initial": r["initial"], "mutations": r["mutations"], "floor": r["floor"],
                     "serve_exit": r.get("serve_exit")}
                    for r in runs],
    }
    # Per-run left sync JSON objects are large; keep only the first run's in full.
    for r in result["per_run"][1:]:
        for slot in [r["initial"]] + list(r["mutations"].values()):
            if slot.get("left"):
                slot["left"].pop("sync", None)
    print_table(result)
    if args.plot:
        sys.path.insert(0, HERE)
        import plot_update
        plot_update.plot(result, args.plot)
        log(f"plot written to {args.plot}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
