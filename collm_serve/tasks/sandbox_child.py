"""The program that runs INSIDE the sandbox, and the plain-data codec both sides share.

Run by `sandbox.py` as a script (`python -I -S -B /sbx/child.py RESULT_FD`) inside bubblewrap;
the parent imports only `encode`, `decode`, `pack_frame` and `unpack_frames` from it (one
definition of the wire format). Pure stdlib, CPython >= 3.8, no collm import.

Process tree inside the sandbox's PID namespace:
  pid 1  bwrap's init (kills everything when the harness exits; the parent SIGKILLs it too)
  pid 2  this harness: trusted, starts before any model code, warms the stdlib, then blocks on
         stdin until the parent sends one job (so a pool of sandboxes can wait ready)
  pid N  one WORKER per test, forked from the warm harness: it alone runs model code, then
         exits; the harness SIGKILLs it (and any process it left) when the test ends. Its
         stdout/stderr are pipes to the harness, which forwards them up to the job's cap and
         drops the rest here (`_relay`), and watches the work dir's inodes (`_collect`).

Verdicts are NOT computed here. A worker can only hand the harness a list of frames, each "call
k returned <plain data>" or "call k raised <message>"; the harness relays the raw bytes, capped,
on RESULT_FD (the worker never holds that fd), and the PARENT decodes them and compares with the
expected values, which never enter the sandbox. Whatever a worker writes (to its pipe, to fd 1/2,
anywhere) is at most a claim about its own return values.

Mode "check" runs the dataset's check code that is not a plain (arguments, expected) pair
(e.g. HumanEval/32's `poly(coeffs, candidate(...))`) against the candidate's plain results, with
no model code in the process; see `sandbox_checks.py`.
"""

import json
import os
import struct
import sys

MAX_DEPTH = 48  # nesting of a result; deeper is "unserialisable"
MAX_NODES = 200_000  # values in one result
MAX_INT_DIGITS = 4000
ERROR_CHARS = 300
INODE_POLL_S = 0.005  # how often the harness checks the work dir's inodes while a worker runs
STREAM_LEFT = {}  # fd 1 / 2 -> bytes the harness may still forward this job (None: no cap)
_HEADER = struct.Struct(">I")


class NotPlainData(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Plain data: None, bool, int, float, str, bytes, list, tuple, set, frozenset, dict of those.
# Exact types only (`type(x) is int`): a subclass, or any object with its own __eq__, cannot be
# encoded, so it cannot reach the parent's comparison.
# ---------------------------------------------------------------------------------------------
def encode(value, _depth=0, _count=None):
    if _count is None:
        _count = [0]
    _count[0] += 1
    if _count[0] > MAX_NODES:
        raise NotPlainData("result too large")
    if _depth > MAX_DEPTH:
        raise NotPlainData("result nested too deeply")
    t = type(value)
    if value is None or t is bool or t is str:
        return value
    if t is int:
        if value.bit_length() > MAX_INT_DIGITS * 3.33:
            raise NotPlainData("integer too large")
        return value
    if t is float:
        return {"f": float.__repr__(value)}
    if t is bytes:
        return {"b": bytes.hex(value)}
    d = _depth + 1
    if t is list:
        return {"l": [encode(v, d, _count) for v in list.__iter__(value)]}
    if t is tuple:
        return {"t": [encode(v, d, _count) for v in tuple.__iter__(value)]}
    if t is set or t is frozenset:
        items = [encode(v, d, _count) for v in t.__iter__(value)]
        return {"s" if t is set else "z": items}
    if t is dict:
        return {"d": [[encode(k, d, _count), encode(v, d, _count)] for k, v in dict.items(value)]}
    raise NotPlainData("type %s is not plain data" % (t.__name__,))


def decode(tree, _depth=0, budget=None):
    """Inverse of `encode`; raises ValueError/TypeError on anything else (hostile input).
    `budget` ([n]): values the caller may still build; ValueError when spent (the parent's
    read budget: a result may not cost it more memory or time than that)."""
    if _depth > MAX_DEPTH + 1:
        raise ValueError("nested too deeply")
    if budget is not None:
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError("result over the read budget")
    t = type(tree)
    if tree is None or t is bool or t is str or t is int:
        return tree
    if t is not dict or len(tree) != 1:
        raise ValueError("not an encoded value")
    (tag, body), = tree.items()
    d = _depth + 1
    if tag == "f" and type(body) is str:
        return float(body)
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if type(body) is not list:
        raise ValueError("not an encoded value")
    if tag == "l":
        return [decode(v, d, budget) for v in body]
    if tag == "t":
        return tuple(decode(v, d, budget) for v in body)
    if tag == "s":
        return {decode(v, d, budget) for v in body}
    if tag == "z":
        return frozenset(decode(v, d, budget) for v in body)
    if tag == "d":
        out = {}
        for kv in body:
            if type(kv) is not list or len(kv) != 2:
                raise ValueError("not an encoded dict item")
            out[decode(kv[0], d, budget)] = decode(kv[1], d, budget)
        return out
    raise ValueError("unknown tag")


def pack_frame(obj, blob=b""):
    """One frame: 4-byte header length, 4-byte blob length, JSON header, raw blob."""
    header = json.dumps(obj, separators=(",", ":")).encode("utf-8")
    return _HEADER.pack(len(header)) + _HEADER.pack(len(blob)) + header + blob


READY = None  # pack_frame({"ready": True}), set below: the harness has its job


def unpack_frames(data, max_frames=100_000):
    """(header dict, blob) pairs from a byte string; a torn or malformed tail is dropped."""
    out = []
    pos = 0
    n = len(data)
    while pos + 8 <= n and len(out) < max_frames:
        hlen = _HEADER.unpack_from(data, pos)[0]
        blen = _HEADER.unpack_from(data, pos + 4)[0]
        end = pos + 8 + hlen + blen
        if end > n:
            break
        try:
            header = json.loads(data[pos + 8: pos + 8 + hlen].decode("utf-8"))
        except (ValueError, RecursionError, MemoryError):
            break
        if type(header) is not dict:
            break
        out.append((header, bytes(data[pos + 8 + hlen: end])))
        pos = end
    return out


READY = pack_frame({"ready": True})


def describe(exc):
    try:
        name = type(exc).__name__
        name = name if type(name) is str else "Exception"
    except BaseException:
        name = "Exception"
    try:
        msg = str(exc)
        msg = msg if type(msg) is str else ""
    except BaseException:
        msg = ""
    text = "%s: %s" % (name, msg) if msg else name
    return text.replace("\n", " ")[:ERROR_CHARS]


def write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


# ---------------------------------------------------------------------------------------------
# Inside the sandbox.
# ---------------------------------------------------------------------------------------------
def _set_limits(lim, nproc_base):
    import resource as R

    for name, value in (("RLIMIT_AS", lim["memory_bytes"]), ("RLIMIT_CPU", lim["cpu_s"]),
                        ("RLIMIT_FSIZE", lim["fsize_bytes"]), ("RLIMIT_NOFILE", lim["nofile"]),
                        ("RLIMIT_CORE", 0), ("RLIMIT_NPROC", nproc_base + lim["nproc"])):
        R.setrlimit(getattr(R, name), (value, value))


def _live_pids():
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _kill_strays(keep):
    """SIGKILL every process of the namespace but `keep` (init, the harness). Iterative."""
    import signal

    for _ in range(50):
        strays = [p for p in _live_pids() if p not in keep]
        if not strays:
            return
        for p in strays:
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        for p in strays:
            try:
                os.waitpid(p, os.WNOHANG)
            except OSError:
                pass


def _inodes_used(path="/work"):
    st = os.statvfs(path)
    return st.f_files - st.f_ffree


def _relay(fd, target):
    """Forwards what a worker wrote to its stdout/stderr pipe `fd` to the harness's own `target`
    (the parent's pipe), up to the job's STREAM_LEFT[target] bytes; the rest is read and dropped
    HERE, inside the sandbox. Why: the parent reads each stream only up to its cap and then
    closes it (issue 27: a flood may not cost the parent CPU), and a worker that merely prints a
    lot must not get EPIPE for it (its verdict would change). "eof", "again" (nothing to read
    now) or "ok"."""
    try:
        chunk = os.read(fd, 65536)
    except (BlockingIOError, InterruptedError):
        return "again"
    except OSError:
        return "eof"
    if not chunk:
        return "eof"
    left = STREAM_LEFT.get(target)
    if left is not None:
        chunk = chunk[:left]
        STREAM_LEFT[target] = left - len(chunk)
    if chunk:
        try:
            write_all(target, chunk)
        except OSError:  # the parent closed it: its cap
            STREAM_LEFT[target] = 0
    return "ok"


def _collect(rfd, pid, per_test_s, cap, inodes=None, streams=None):
    """Reads the worker's pipe until EOF, the cap, or the per-test deadline; then kills it.
    Meanwhile relays its stdout/stderr (`streams`: {pipe fd: 1 or 2}, `_relay`).

    `inodes`: the work dir's inode cap. bwrap cannot mount a tmpfs with `nr_inodes`, so the
    harness checks the tmpfs's used inodes every INODE_POLL_S and kills a worker over the cap
    ("inode_limit"); the overshoot is what one worker creates in that interval."""
    import select
    import signal
    import time

    streams = dict(streams or {})
    deadline = time.monotonic() + per_test_s
    chunks, size, why = [], 0, ""
    done = False
    while not done:
        left = deadline - time.monotonic()
        if left <= 0:
            why = "timeout"
            break
        ready, _, _ = select.select([rfd] + list(streams), [], [], min(left, INODE_POLL_S) if inodes else left)
        if inodes and _inodes_used() > inodes:
            why = "inode_limit"
            break
        for fd in ready:
            if fd in streams:
                if _relay(fd, streams[fd]) == "eof":
                    os.close(fd)
                    del streams[fd]
                continue
            chunk = os.read(rfd, 65536)
            if not chunk:
                done = True
                break
            size += len(chunk)
            if size > cap:
                why = "output_limit"
                done = True
                break
            chunks.append(chunk)
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
    try:
        _, status = os.waitpid(pid, 0)
    except OSError:
        status = 0
    os.close(rfd)
    for fd, target in streams.items():  # what the worker wrote last (it is dead: EOF follows)
        os.set_blocking(fd, False)
        for _ in range(64):  # <= 4 MiB: a pipe holds 64 KiB unless a stray writer refills it
            if _relay(fd, target) != "ok":
                break
        os.close(fd)
    return b"".join(chunks), status, why


def _worker(job, test, wfd):
    """Runs in a forked worker: defines the code, re-binds the preamble, makes the calls."""
    import builtins

    _set_limits(job["limits"], job["nproc_base"])
    ns = {"__name__": "__main__", "__builtins__": builtins}

    def emit(obj):
        write_all(wfd, pack_frame(obj))

    for src, label in ((job["code"], "<solution>"), (job["rebind"], "<preamble>")):
        if not src:
            continue
        try:
            exec(compile(src, label, "exec"), ns)
        except BaseException as exc:
            emit({"code_error": describe(exc)})
            return
    fn = ns.get(job["entry"])
    if not callable(fn):
        emit({"code_error": "NameError: the entry point %r is not defined" % (job["entry"],)})
        return
    expected = test.get("expected")  # only when the parent runs with the weakened child_verdict
    for k, (args, kwargs) in enumerate(test["calls"]):
        try:
            value = fn(*decode(args), **decode(kwargs))
            if expected is not None:
                frame = {"i": k, "verdict": bool(value == decode(expected[k]))}
            else:
                try:
                    frame = {"i": k, "ok": encode(value)}
                except NotPlainData as exc:
                    frame = {"i": k, "raise": "TypeError: result is not plain data (%s)" % (exc,)}
        except BaseException as exc:
            frame = {"i": k, "raise": describe(exc)}
        emit(frame)


def _in_worker(run, result_fd, timeout_s, cap, inodes=None):
    """Forks a worker that runs `run(wfd)` and exits, without RESULT_FD and with its stdout
    and stderr on pipes the harness relays; returns what `_collect` reads of its result pipe:
    (data, status, why)."""
    rfd, wfd = os.pipe()
    (out_r, out_w), (err_r, err_w) = os.pipe(), os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            for fd in (rfd, out_r, err_r, result_fd):
                os.close(fd)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.close(out_w)
            os.close(err_w)
            run(wfd)
        finally:
            os._exit(0)
    for fd in (wfd, out_w, err_w):
        os.close(fd)
    return _collect(rfd, pid, timeout_s, cap, inodes, {out_r: 1, err_r: 2})


def _flushed(fn, *args):
    """`fn(*args)`, then stdout and stderr flushed whatever happened (before the worker's
    os._exit, which skips Python's own flush)."""
    try:
        fn(*args)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:
                pass


def _run_candidate(job, result_fd):
    lim = job["limits"]
    keep = {1, os.getpid()}
    # processes that exist before a worker starts (init, harness) do not count against nproc
    job["nproc_base"] = len(_live_pids())
    for i, test in enumerate(job["tests"]):
        data, status, why = _in_worker(lambda wfd: _flushed(_worker, job, test, wfd), result_fd,
                                       lim["per_test_timeout_s"], lim["result_bytes"],
                                       lim.get("tmpfs_inodes"))
        if job["kill_strays"] and os.getppid() == 1:  # only as pid 2 of our own namespace
            _kill_strays(keep)
        write_all(result_fd, pack_frame({"t": i, "why": why, "status": status}, data))


class _Replay:
    """`candidate` for a check in mode "check": gives back the recorded plain results in order,
    after checking the test makes the same calls as when it was recorded."""

    def __init__(self, calls, results):
        self.calls, self.results, self.k = calls, results, 0

    def __call__(self, *args, **kwargs):
        k = self.k
        self.k += 1
        if k >= len(self.calls) or [encode(args), encode(kwargs)] != self.calls[k]:
            raise AssertionError("the check made other calls than recorded (not deterministic)")
        r = self.results[k]
        if r is None:
            raise RuntimeError("the candidate gave no result for this call (timeout or crash)")
        if "raise" in r:
            raise RuntimeError("the candidate raised %s" % (r["raise"],))
        return decode(r["ok"])


def _check_worker(chk, lim, wfd):
    """A worker of mode "check": runs one check against the replayed plain results."""
    import builtins
    import random

    _set_limits(lim, len(_live_pids()))
    ns = {"__name__": "__main__", "__builtins__": builtins}
    err = ""
    try:
        exec(compile(chk["prelude"], "<prelude>", "exec"), ns)
        random.seed(chk["seed"])
        ns["candidate"] = _Replay(chk["calls"], chk["results"])
        if chk.get("code"):  # only the weakened trusted_check (tests): the old way
            exec(compile(chk["code"], "<solution>", "exec"), ns)
            ns["candidate"] = ns[chk["entry"]]
        exec(compile(chk["source"], "<check>", "exec"), ns)
    except BaseException as exc:
        err = describe(exc) or "error"
    write_all(wfd, pack_frame({"passed": not err, "error": err}))


def _run_checks(job, result_fd):
    lim = job["limits"]
    for i, chk in enumerate(job["checks"]):
        data, status, why = _in_worker(lambda wfd: _check_worker(chk, lim, wfd), result_fd,
                                       lim["per_test_timeout_s"], 1 << 16)
        write_all(result_fd, pack_frame({"t": i, "why": why, "status": status}, data))


def main(argv):
    result_fd = int(argv[1])
    # Warm the stdlib before the job arrives (a pooled sandbox waits here, ready).
    for mod in ("typing", "collections", "re", "math", "itertools", "functools", "heapq",
                "string", "bisect", "hashlib", "random", "copy", "fractions", "decimal",
                "statistics", "operator", "datetime", "array", "enum", "dataclasses", "select",
                "resource", "signal", "time"):
        try:
            __import__(mod)
        except Exception:
            pass
    try:  # not dumpable: no process of the sandbox may open /proc/<harness>/mem
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4
    except Exception:
        pass
    raw = b""
    while True:
        chunk = os.read(0, 1 << 20)
        if not chunk:
            break
        raw += chunk
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.close(fd)
    job = json.loads(raw.decode("utf-8"))
    del raw
    cap = job["limits"].get("stream_bytes")
    STREAM_LEFT.update({1: cap, 2: cap})
    write_all(result_fd, READY)  # before any model code: the parent tells a failed start from a run
    if job["mode"] == "run":
        _run_candidate(job, result_fd)
    else:
        _run_checks(job, result_fd)
    write_all(result_fd, pack_frame({"done": True}))
    os._exit(0)


if __name__ == "__main__":
    main(sys.argv)
