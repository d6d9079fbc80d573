"""Sandbox fuzz (issue 27, item 6): N random and adversarial answers through the coding task.

Each answer is a joint answer scored by `CodingTask.evaluate` (the reward path an episode takes,
sandbox retry included). Half are adversarial - one per attack class of issue 27 and the rounds
before it (record floods, stdout/stderr floods, a stopped or killed harness, writes to every
mount, an inode flood, SysV shared memory, memfd, a fork bomb, a memory hog, a busy loop, deep
recursion, a huge return value, a sleep) - and half random (mutated canonical solutions, byte
soup in a function body), seeded. Reported:

- worst `run_tests` wall time ÷ `timeout_s` (the contract: <= 1 + RETURN_GRACE_S / timeout_s),
  and the worst wall time of the whole `evaluate`;
- peak parent RSS growth over the run (sampled every 10 ms; the sandbox's processes are not
  the parent's);
- host shared memory growth per answer: the peak of /proc/meminfo `Shmem` while an answer runs
  minus its value just before (host-wide: other processes on the machine add noise), and what
  stayed after the last answer (a leak would show here).

    python bench/sandbox_fuzz.py [--n 32] [--timeout 5] [--quick]     (bench/run_all.py records its rows)
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import print_table  # noqa: E402
from collm_serve.tasks.coding import CodingTask  # noqa: E402
from collm_serve.tasks.sandbox import RETURN_GRACE_S, SandboxLimits  # noqa: E402

# Bodies of the main function (indented 4); `args` are the test's arguments, ignored.
ATTACKS = {
    "record flood (huge values)": """
    import json, os, struct
    h = json.dumps({"i": 0, "ok": {"l": [0] * 300000}}).encode()
    blob = struct.pack(">II", len(h), 0) + h
    for fd in range(3, 64):
        try:
            if os.readlink("/proc/self/fd/%d" % fd).startswith("pipe:"):
                while True:
                    os.write(fd, blob)
        except OSError:
            pass""",
    "record flood (tiny frames)": """
    import os, struct
    blob = (struct.pack(">II", 7, 0) + b'{"i":5}') * 20000
    for fd in range(3, 64):
        try:
            if os.readlink("/proc/self/fd/%d" % fd).startswith("pipe:"):
                while True:
                    os.write(fd, blob)
        except OSError:
            pass""",
    "stdout flood": """
    import os
    while True:
        try:
            os.write(1, b"x" * 65536)
        except OSError:
            pass""",
    "stderr flood": """
    import sys
    while True:
        try:
            sys.stderr.write("y" * 65536)
        except OSError:
            pass""",
    "stop the harness": """
    import os, signal, time
    os.kill(os.getppid(), signal.SIGSTOP)
    time.sleep(60)""",
    "kill the harness": """
    import os, signal
    os.kill(os.getppid(), signal.SIGKILL)""",
    "write every mount": """
    import os
    for line in open("/proc/self/mountinfo"):
        d = line.split()[4]
        for i in range(64):
            try:
                with open(os.path.join(d, "f%d" % i), "wb") as f:
                    f.write(b"z" * (1 << 20))
            except OSError:
                break""",
    "inode flood": """
    import os
    i = 0
    while True:
        try:
            os.close(os.open("n%d" % i, os.O_CREAT | os.O_WRONLY))
            os.mkdir("d%d" % i)
        except OSError:
            pass
        i += 1""",
    "SysV shared memory": """
    import ctypes
    libc = ctypes.CDLL(None)
    libc.shmat.restype = ctypes.c_void_p
    libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
    for _ in range(16):
        sid = libc.shmget(0, 64 << 20, 0o1600)
        if sid >= 0:
            ctypes.memset(libc.shmat(sid, None, 0), 1, 64 << 20)""",
    "memfd": """
    import os
    fds = []
    for _ in range(60):
        fd = os.memfd_create("m")
        os.write(fd, b"m" * (4 << 20))
        fds.append(fd)""",
    "fork bomb": """
    import os
    while True:
        try:
            os.fork()
        except OSError:
            pass""",
    "memory hog": """
    chunks = []
    while True:
        chunks.append(bytearray(64 << 20))""",
    "busy loop": """
    while True:
        pass""",
    "deep recursion": """
    import sys
    sys.setrecursionlimit(10 ** 7)
    def r(n):
        return r(n + 1) + 1
    return r(0)""",
    "huge return value": """
    return [[i] * 50 for i in range(100000)]""",
    "sleep": """
    import time
    time.sleep(10 ** 6)""",
}


def _meminfo_kib(field: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _shmem_kib() -> int:
    return _meminfo_kib("Shmem")


def _slab_kib() -> int:
    """Kernel slab: where tmpfs inodes and dentries live (not in Shmem)."""
    return _meminfo_kib("Slab")


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Sampler:
    """Peak parent RSS and peak host Shmem, every 10 ms, in a thread."""

    def __init__(self) -> None:
        self.rss_peak = self.shm_peak = self.slab_peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.rss_peak = max(self.rss_peak, _rss_kib())
            self.shm_peak = max(self.shm_peak, _shmem_kib())
            self.slab_peak = max(self.slab_peak, _slab_kib())

    def reset_shm(self) -> None:
        self.shm_peak, self.slab_peak = _shmem_kib(), _slab_kib()

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def random_answer(rng: random.Random, problem) -> str:
    """A mutated canonical solution or byte soup in the entry point's body."""
    pl = problem.payload
    if rng.random() < 0.5:
        lines = (pl["prompt"] + pl["canonical_solution"]).split("\n")
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(lines))
            op = rng.choice(["drop", "dup", "swap", "char"])
            if op == "drop":
                lines.pop(i)
            elif op == "dup":
                lines.insert(i, lines[i])
            elif op == "swap" and len(lines) > 1:
                j = rng.randrange(len(lines))
                lines[i], lines[j] = lines[j], lines[i]
            elif lines[i]:
                k = rng.randrange(len(lines[i]))
                lines[i] = lines[i][:k] + chr(rng.randrange(32, 0x2FF)) + lines[i][k + 1:]
            if not lines:
                lines = ["pass"]
        return "\n".join(lines)
    soup = "".join(chr(rng.choice([rng.randrange(32, 127), rng.randrange(0xA0, 0x3000)]))
                   for _ in range(rng.randint(1, 400)))
    return f"def {pl['entry_point']}(*args):\n    return {soup!r}[::-1] or (lambda: {rng.randrange(10 ** 6)})()\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=32, help="answers in all: every attack once, the rest random")
    ap.add_argument("--timeout", type=float, default=5.0, help="run_tests timeout_s (the task's default: 10)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: 8 answers, timeout 2 s (not for the record)")
    args = ap.parse_args()
    if args.quick:
        args.n, args.timeout = 8, 2.0
    rng = random.Random(args.seed)
    task = CodingTask(timeout_s=args.timeout, per_test_timeout_s=min(2.0, args.timeout))
    problems = task.all_problems()
    limits: SandboxLimits = task.limits
    answers = [(name, body) for name, body in ATTACKS.items()][: args.n]
    while len(answers) < args.n:
        answers.append(("random", None))
    warm = problems[0]
    task.evaluate(warm, "", warm.payload["prompt"] + warm.payload["canonical_solution"])  # probe + pool
    rss0, shm0 = _rss_kib(), _shmem_kib()
    worst = (0.0, "")
    worst_eval = 0.0
    shm_growth = slab_growth = (0, "")
    levels: dict[str, int] = {}
    t_start = time.monotonic()
    with Sampler() as s:
        for k, (name, body) in enumerate(answers):
            problem = rng.choice(problems)
            entry = problem.payload["entry_point"]
            main_code = (random_answer(rng, problem) if body is None
                         else f"def {entry}(*args, **kwargs):{body}\n    return None\n")
            before, slab_before = _shmem_kib(), _slab_kib()
            s.reset_shm()
            t0 = time.monotonic()
            _, info = task.evaluate(problem, "", main_code)
            wall = time.monotonic() - t0
            tests = info.get("tests") or {}
            run_wall = float(tests.get("duration_s", 0.0))
            if run_wall / limits.timeout_s > worst[0]:
                worst = (run_wall / limits.timeout_s, name)
            worst_eval = max(worst_eval, wall)
            grew = max(0, s.shm_peak - before)
            if grew > shm_growth[0]:
                shm_growth = (grew, name)
            slab_grew = max(0, s.slab_peak - slab_before)
            if slab_grew > slab_growth[0]:
                slab_growth = (slab_grew, name)
            levels[tests.get("killed_reason") or "-"] = levels.get(tests.get("killed_reason") or "-", 0) + 1
            print(f"{k:3d} {name:28s} run {run_wall:6.2f} s  evaluate {wall:6.2f} s  shm +{grew / 1024:6.1f} "
                  f"slab +{slab_grew / 1024:6.1f} MiB  {tests.get('killed_reason', '') or ''}", flush=True)
        rss_peak = s.rss_peak
    time.sleep(0.5)
    shm_left = _shmem_kib() - shm0
    bound = 1 + RETURN_GRACE_S / limits.timeout_s
    n_adv = sum(1 for n, b in answers if b is not None)
    ram_gib = _meminfo_kib("MemTotal") / (1 << 20)
    print_table(f"{'SMOKE (--quick) ' if args.quick else ''}sandbox fuzz: {len(answers)} answers ({n_adv} "
                f"adversarial, {len(answers) - n_adv} random, seed {args.seed}) through CodingTask.evaluate, "
                f"timeout_s {limits.timeout_s:g}, {time.strftime('%Y-%m-%d')}, "
                f"{len(os.sched_getaffinity(0))}-core machine, {ram_gib:.1f} GiB RAM", [
        ("worst run_tests wall ÷ timeout_s", f"{worst[0]:.2f}",
         f"{worst[1]}; contract <= {bound:.2f} (timeout_s + RETURN_GRACE_S {RETURN_GRACE_S:g} s): "
         f"{'met' if worst[0] <= bound else 'NOT met'}"),
        ("worst evaluate wall ÷ timeout_s", f"{worst_eval / limits.timeout_s:.2f}",
         "the whole reward: text analysis + run_tests (+ retries)"),
        ("peak parent RSS growth, MiB", f"{(rss_peak - rss0) / 1024:.1f}", "over the whole run, sampled every 10 ms"),
        ("host Shmem growth per answer (worst), MiB", f"{shm_growth[0] / 1024:.1f}",
         f"{shm_growth[1]}; cap per run: tmpfs_bytes {limits.tmpfs_bytes >> 20} MiB "
         f"({'met' if shm_growth[0] <= limits.tmpfs_bytes >> 10 else 'NOT met'}); host-wide, other processes "
         "add noise"),
        ("host slab growth per answer (worst), MiB", f"{slab_growth[0] / 1024:.1f}",
         f"{slab_growth[1]}; tmpfs inodes and dentries live here (tmpfs_inodes {limits.tmpfs_inodes}), and "
         "every process's kernel objects; host-wide, noisy"),
        ("host Shmem left after the run, MiB", f"{shm_left / 1024:.1f}", "0 = nothing kept between runs"),
        ("answers by how the run ended", ", ".join(f"{k} {v}" for k, v in sorted(levels.items())),
         f"{time.monotonic() - t_start:.0f} s in all"),
    ])


if __name__ == "__main__":
    main()
