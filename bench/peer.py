"""The paper's code side by side with ours: comlrl MAAC / IAC / MAGRPO vs collm cc / dc / magrpo.

Same model (SmolLM2-135M-Instruct: the HF folder `resolve_model("embedded:smollm2-135m-instruct")`
converts from the packaged GGUF, given to both sides, float32), same task (our `writing`, the
paper's TLDR task: the first N train problems, the same chat-templated prompt text per agent, the
same reward `score_pair`), same episodes, max new tokens and sampling (temperature 0.7, top_p 0.9,
no top_k: the paper's configs/maac_tldr_config.yaml), the same episodes per update (`--batch`,
default 4: the paper's rollout_buffer_size) and K=4 samples per agent for the MC pair
(`--group`: the paper's num_generations in configs/magrpo_tldr_config.yaml).

  comlrl side  MAACTrainer / IACTrainer / MAGRPOTrainer (comlrl/trainers/actor_critic/maac.py,
               iac.py, reinforce/magrpo.py) wired as the paper's LLM_Collab_Writing/train_maac.py
               does: a dataset, per-agent formatters, reward_func(prompts, c1, c2); one process
               that generates with transformers and trains full model copies (MAAC: 2 actors +
               1 critic; IAC: 2 + 2; MAGRPO: 2).
  collm side   our real pipeline: two vLLM agent services (one core each), collect through the
               orchestrator into SQLite, collm_train.Trainer (LoRA) update, push + hot-swap
               (collm_train.online.online_loop, as collm_train.demo runs it).

Each run is its own process, one after the other (never two at once), so its peak RSS
(ru_maxrss) is its own; on our side that is the trainer process (the vLLM services are separate
processes; their RSS is in the note). Measured per pair and per episode count N:
  episodes/hour     N / wall time of the training loop (collect + update [+ push]); model
                    loading / service start-up is excluded on both sides and given in the note
  update tokens/s   prompt + response tokens of the actions trained / seconds inside the update
                    (comlrl: time in `_update` / `_update_from_samples`; its old log-probs and
                    values are computed during collection, ours inside the update)
  update work       (actor + critic tokens trained) / seconds inside the update, ours only: CC
                    and DC also train a critic on every history (Trainer metrics
                    charts/actor_tokens, charts/critic_tokens), so their actor-token rate alone
                    cannot reach the fwd+bwd limit; this row shows how close the work comes
  trainer peak RSS  ru_maxrss of the trainer process
comlrl pads with <|endoftext|>: SmolLM2's pad is its EOS, which the chat-templated prompts
contain, and comlrl MAGRPO cuts a prompt at its first pad (docs/benchmarks.md).
Plus the physical limit: plain forward + backward (full model, batch 1, no optimizer) tokens/s
on the sequence lengths our runs trained, and our update tokens/s ÷ that limit.

comlrl is NEVER installed by this script unless asked: it runs the comlrl side with
`--peer-python` (default .bench/comlrl-venv/bin/python when present; .bench/ is git-ignored),
and `--create-peer-venv` makes that venv (python -m venv, then torch==2.13.0 first - the local
CPU wheel - then comlrl==1.4.3, checking that torch is still 2.13.0+cpu). Without an importable
comlrl it prints "skipped: comlrl not importable (create with --create-peer-venv)" and exits 0.

    python bench/peer.py --create-peer-venv --only-venv        # once (downloads from PyPI)
    python bench/peer.py --episodes 8,32 --max-tokens 48       # the full run (about an hour, 2 idle cores)
    python bench/peer.py --episodes 2 --max-tokens 16 --algos cc   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MODEL = "embedded:smollm2-135m-instruct"
PEER_VENV = REPO / ".bench" / "comlrl-venv"
PEER_VERSION = "1.4.3"  # the newest; 1.3.6 is the paper's release
TORCH_VERSION = "2.13.0"
# ours -> comlrl
PAIRS = {"cc": "MAAC", "dc": "IAC", "magrpo": "MAGRPO"}
SKIP = "skipped: comlrl not importable (create with --create-peer-venv)"
TEMPERATURE, TOP_P = 0.7, 0.9  # configs/maac_tldr_config.yaml:4-5 (all three writing configs)
AGENTS = ("writer_a", "writer_b")


# ---------------------------------------------------------------------------- arguments
def parse_episodes(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--episodes {text!r}: use comma-separated integers, e.g. 8,32") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--episodes {text!r}: every count must be >= 1")
    return values


def parse_algos(text: str) -> list[str]:
    values = [v.strip() for v in text.split(",") if v.strip()]
    bad = [v for v in values if v not in PAIRS]
    if bad or not values:
        raise argparse.ArgumentTypeError(f"--algos {text!r}: choose from {','.join(PAIRS)}")
    return values


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--episodes", type=parse_episodes, default=[8, 32], help="episode counts, e.g. 8,32")
    ap.add_argument("--max-tokens", type=int, default=48, help="max new tokens per action (both sides)")
    ap.add_argument("--algos", type=parse_algos, default=list(PAIRS), help="ours: cc,dc,magrpo (comlrl pair each)")
    ap.add_argument("--batch", type=int, default=4, help="episodes per update (paper: rollout_buffer_size 4)")
    ap.add_argument("--group", type=int, default=4, help="samples per agent for magrpo / MAGRPO (paper: 4)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in each trainer (0: torch's default)")
    ap.add_argument("--peer-python", type=Path, default=None,
                    help=f"a Python with comlrl importable (default: {PEER_VENV.relative_to(REPO)}/bin/python)")
    ap.add_argument("--create-peer-venv", action="store_true",
                    help=f"create {PEER_VENV.relative_to(REPO)} (torch {TORCH_VERSION} CPU, comlrl {PEER_VERSION})")
    ap.add_argument("--only-venv", action="store_true", help="with --create-peer-venv: create it and exit")
    ap.add_argument("--json", type=Path, default=None, help="also write every measurement here")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spec", type=Path, default=None, help=argparse.SUPPRESS)
    return ap


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = build_parser()
    args = ap.parse_args(argv)
    for name in ("max_tokens", "batch", "group"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    if args.threads < 0:
        ap.error("--threads must be >= 0")
    for n in args.episodes:
        if n % min(args.batch, n):
            ap.error(f"--episodes {n} is not a multiple of --batch {args.batch}: both sides update every --batch episodes")
    if args.only_venv and not args.create_peer_venv:
        ap.error("--only-venv needs --create-peer-venv")
    return args


# ---------------------------------------------------------------------------- the peer venv
def default_peer_python() -> Path:
    return PEER_VENV / "bin" / "python"


def peer_version(python: Path | None) -> str | None:
    """comlrl's version when `python` exists and imports it, else None (never installs)."""
    if python is None or not Path(python).exists():
        return None
    proc = subprocess.run([str(python), "-c", "import comlrl; print(comlrl.__version__)"], capture_output=True,
                          text=True, timeout=300)
    return proc.stdout.strip() or None if proc.returncode == 0 else None


def skip_reason(python: Path | None = None) -> str | None:
    """SKIP when `python` (default: the peer venv's) cannot import comlrl, else None."""
    return None if peer_version(python or default_peer_python()) else SKIP


def create_peer_venv(venv: Path = PEER_VENV) -> Path:
    """python -m venv; torch==2.13.0 FIRST (the local CPU wheel: comlrl's own pin would let pip
    pull a CUDA torch); then comlrl==1.4.3 and its dependencies; then check torch is still +cpu."""
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(python), "-m", "pip", "install"]
    subprocess.run([*pip, f"torch=={TORCH_VERSION}"], check=True)
    subprocess.run([*pip, f"comlrl=={PEER_VERSION}"], check=True)
    shown = subprocess.run([str(python), "-m", "pip", "show", "torch"], capture_output=True, text=True, check=True)
    version = next((ln.split(":", 1)[1].strip() for ln in shown.stdout.splitlines() if ln.startswith("Version:")), "")
    if version != f"{TORCH_VERSION}+cpu":
        raise SystemExit(f"{venv}: torch is {version!r} after installing comlrl, not {TORCH_VERSION}+cpu; "
                         f"remove {venv} and retry")
    return python


# ---------------------------------------------------------------------------- shared by the workers
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _threads(n: int) -> int:
    import torch

    if n:
        torch.set_num_threads(n)
    return torch.get_num_threads()


def problems(n: int) -> list[dict]:
    """The first n train problems of `writing` (the order our collector plans them:
    orchestrator/teams.py plan_episodes) with each agent's full prompt text, as our agent
    service builds it (its system prompt + the task's prompt, the model's chat template)."""
    from transformers import AutoTokenizer

    from collm_serve.config import load_agents_file
    from collm_serve.models import resolve_model
    from collm_serve.tasks import get_task

    task = get_task("writing")
    tok = AutoTokenizer.from_pretrained(resolve_model(MODEL))
    builtin, _ = load_agents_file()
    train = task.problems("train")
    out = []
    for i in range(n):
        p = train[i % len(train)]
        row = {"problem_id": p.problem_id}
        for k, agent in enumerate(AGENTS):
            messages = [{"role": "system", "content": builtin[agent]["system_prompt"]},
                        {"role": "user", "content": task.prompt(agent, p.payload)}]
            row[f"prompt_{k}"] = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        out.append(row)
    return out


# ---------------------------------------------------------------------------- comlrl side (peer venv)

def _timed_update(inner, count_tokens, stats: dict):
    """Wrap a comlrl trainer's update method: trained tokens and seconds inside the update."""
    def timed(agent_idx, batch):
        stats["tokens"] += count_tokens(batch)
        t = time.perf_counter()
        out = inner(agent_idx, batch)
        stats["update_s"] += time.perf_counter() - t
        stats["updates"] += 1
        return out

    return timed

def worker_comlrl(spec: dict) -> dict:
    """LLM_Collab_Writing/train_maac.py (train_iac.py, train_magrpo.py) with our data and reward."""
    os.environ.setdefault("WANDB_MODE", "disabled")
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    import comlrl
    from comlrl.trainers import IACConfig, IACTrainer, MAACConfig, MAACTrainer, MAGRPOConfig, MAGRPOTrainer
    from collm_serve.tasks.writing import TLDR, score_pair

    threads = _threads(spec["threads"])
    torch.manual_seed(0)
    algo, model_dir, rows = spec["peer"], spec["model_dir"], spec["problems"]
    tok = AutoTokenizer.from_pretrained(model_dir)
    if tok.pad_token is None:  # train_maac.py: pad = eos
        tok.pad_token = tok.eos_token
    if tok.pad_token_id == tok.eos_token_id and tok.unk_token is not None:
        # SmolLM2's pad is its EOS <|im_end|>, which every chat-templated prompt contains; MAGRPO
        # cuts the prompt at its first pad token (reinforce/magrpo.py `_generate_completions`,
        # "pad_positions") and would train on the prompt twice. <|endoftext|> never occurs in them.
        tok.pad_token = tok.unk_token
    tok.padding_side = "left"  # configs/*_tldr_config.yaml tokenizer.padding_side

    def reward_fn(prompts, completions1, completions2):  # train_maac.py make_reward_function
        return [score_pair(a, b, TLDR)[0] for a, b in zip(completions1, completions2)]

    formatters = [lambda ex, **_: ex["prompt_0"], lambda ex, **_: ex["prompt_1"]]
    common = dict(num_train_epochs=1, agent_learning_rate=5e-6, max_new_tokens=spec["max_tokens"],
                  temperature=TEMPERATURE, top_p=TOP_P, top_k=None, num_agents=2, num_turns=1,
                  rollout_buffer_size=spec["batch"], train_batch_size=spec["batch"], eval_interval=0,
                  logging_steps=10**9)
    kw = dict(agent_model=model_dir, tokenizer=tok, reward_func=reward_fn, formatters=formatters,
              train_dataset=Dataset.from_list(rows), eval_dataset=None,
              # fp32 like ours. MAAC/IAC read the nested model_kwargs (actor_critic/maac.py:207-209,
              # iac.py:240), MAGRPO only the top level (reinforce/magrpo.py:249 -> utils/model_loading.py:
              # 14-16): with the nested key alone it loaded the checkpoint's bfloat16 and its update ran
              # ~1.7x faster than fp32 can, at half the memory (the 2026-12-03 00:10 run, since redone)
              model_config={"torch_dtype": torch.float32, "model_kwargs": {"torch_dtype": torch.float32}},
              wandb_config=None)
    stats = {"update_s": 0.0, "tokens": 0, "updates": 0}
    t0 = time.perf_counter()
    if algo == "MAGRPO":
        trainer = MAGRPOTrainer(**kw, args=MAGRPOConfig(**common, num_generations=spec["group"]))

        def magrpo_tokens(samples) -> int:
            total = 0
            for s in samples:
                p = int(s.completions_data["prompt_input_ids"].shape[-1])
                comps = s.completions_data["completion_input_ids"]
                comps = comps[0] if comps and isinstance(comps[0], list) else comps
                total += sum(p + len(c) for c in comps)
            return total

        trainer._update_from_samples = _timed_update(trainer._update_from_samples, magrpo_tokens, stats)
    else:
        cls, cfg = (MAACTrainer, MAACConfig) if algo == "MAAC" else (IACTrainer, IACConfig)
        trainer = cls(**kw, critic_model=model_dir, args=cfg(**common, critic_learning_rate=5e-6))
        trainer._update = _timed_update(
            trainer._update, lambda rollouts: sum(int(s.prompt_len) + int(s.response_len) for s in rollouts), stats)
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    dtypes = {str(p.dtype) for agent in trainer.agents for p in agent.parameters()}
    if dtypes != {"torch.float32"}:
        raise RuntimeError(f"comlrl {algo} agents are {sorted(dtypes)}, not float32 as ours: not a like-for-like run")
    trainer.train()
    loop_s = time.perf_counter() - t1
    return {"side": "comlrl", "algo": algo, "version": comlrl.__version__, "episodes": len(rows),
            "setup_s": setup_s, "loop_s": loop_s, **stats, "peak_rss_mb": _peak_rss_mb(), "threads": threads}


# ---------------------------------------------------------------------------- collm side (this venv)
def _tree_rss_mb(pid: int) -> float:
    import psutil

    try:
        root = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)]) / (1 << 20)
    except psutil.Error:
        return 0.0


def worker_collm(spec: dict) -> dict:
    """collm_train.demo's pipeline without its evaluations: services, online_loop, stop."""
    import signal
    from concurrent.futures import ThreadPoolExecutor

    from collm_serve.launcher import AgentProcess
    from collm_serve.models import model_id_for, resolve_model
    from collm_serve.team import TeamConfig
    from collm_train.config import TrainConfig
    from collm_train.demo import agents_yaml
    from collm_train.online import online_loop
    from collm_train.run import RunLog
    from collm_train.trainer import Trainer

    threads = _threads(spec["threads"])
    algo, n, batch = spec["algo"], spec["episodes"], spec["batch"]
    group = spec["group"] if algo == "magrpo" else 1
    workdir = Path(tempfile.mkdtemp(prefix="collm-peer-"))
    (workdir / "adapters").mkdir()
    cfg_path = agents_yaml(workdir, list(AGENTS), "vllm", MODEL, spec["max_tokens"])
    procs = [AgentProcess(a, config=cfg_path, log_path=workdir / f"{a}.log") for a in AGENTS]
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    stats = {"update_s": 0.0, "tokens": 0, "critic_tokens": 0, "updates": 0, "lengths": []}
    try:
        t0 = time.perf_counter()
        with ThreadPoolExecutor(len(procs)) as pool:
            list(pool.map(lambda p: p.start(timeout=900), procs))
        sampling = {"max_tokens": spec["max_tokens"], "temperature": TEMPERATURE, "top_p": TOP_P}
        team = TeamConfig(task="writing", traces=str(workdir / "traces.db"), seed=0, group_size=group,
                          agents={p.agent: {"address": p.address, "timeout_s": 600, "sampling": sampling}
                                  for p in procs})
        config = TrainConfig(algo=algo, seed=0, micro_batch_size=4)
        run = RunLog(workdir / "runs", "writing", algo, 0, {**config.model_dump(), "model": MODEL})
        trainer = Trainer(config, resolve_model(MODEL), list(AGENTS), base_model_id=model_id_for(MODEL))
        inner = trainer.update

        def timed(episodes, **kw):
            for e in episodes:
                for t in e.turns:
                    for a in t.actions:
                        length = len(a.prompt_token_ids) + len(a.response_token_ids)
                        stats["tokens"] += length
                        stats["lengths"].append(length)
            t = time.perf_counter()
            out = inner(episodes, **kw)
            stats["update_s"] += time.perf_counter() - t
            stats["critic_tokens"] += int(out.get("charts/critic_tokens", 0))
            stats["updates"] += 1
            return out

        trainer.update = timed
        setup_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        history = online_loop(team, trainer, run, out_dir=workdir / "adapters", iterations=n // batch,
                              episodes_per_iteration=batch, traces=team.traces, concurrency=8,
                              echo=lambda *a: print(*a, file=sys.stderr))
        loop_s = time.perf_counter() - t1
        run.close()
        services_mb = sum(_tree_rss_mb(p.proc.pid) for p in procs if p.proc is not None)
    finally:
        for p in procs:  # an agent that died mid-run: its log is the only evidence, print before cleanup
            if p.proc is not None and p.proc.poll() is not None and p.log_path and p.log_path.exists():
                tail = p.log_path.read_text(errors="replace").splitlines()[-40:]
                print(f"agent {p.agent} exited with {p.proc.returncode}; last log lines:", *tail, sep="\n",
                      file=sys.stderr)
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    done = sum(1 for _ in history) * batch
    return {"side": "collm", "algo": algo, "episodes": done, "setup_s": setup_s, "loop_s": loop_s, **stats,
            "peak_rss_mb": _peak_rss_mb(), "services_rss_mb": services_mb, "threads": threads}


def worker_limit(spec: dict) -> dict:
    """Plain forward + backward of the full model, batch 1, on the given sequence lengths."""
    import torch
    from transformers import AutoModelForCausalLM

    from collm_serve.models import resolve_model

    threads = _threads(spec["threads"])
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(MODEL), dtype=torch.float32).train()
    lengths = spec["lengths"]
    vocab = model.config.vocab_size

    def step(length):
        ids = torch.randint(0, vocab, (1, length))
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    step(lengths[0])  # warm-up
    t = time.perf_counter()
    for length in lengths:
        step(length)
    seconds = time.perf_counter() - t
    return {"side": "limit", "tokens": sum(lengths), "seconds": seconds, "tokens_per_s": sum(lengths) / seconds,
            "sequences": len(lengths), "threads": threads}


WORKERS = {"comlrl": worker_comlrl, "collm": worker_collm, "limit": worker_limit}


# ---------------------------------------------------------------------------- driver
def run_worker(python: Path | str, kind: str, spec: dict) -> dict:
    """One measurement in its own process; {"error": why} when it fails."""
    with tempfile.TemporaryDirectory(prefix="collm-peer-spec-") as tmp:
        path = Path(tmp) / "spec.json"
        path.write_text(json.dumps(spec))
        env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "WANDB_MODE": "disabled"}
        proc = subprocess.run([str(python), __file__, "--worker", kind, "--spec", str(path)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, text=True)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        why = "killed (SIGKILL: out of memory?)" if proc.returncode == -9 else f"exit {proc.returncode}"
        return {"error": why}
    return json.loads(line[len("RESULT "):])


def rate(r: dict) -> tuple[float, float]:
    """(episodes/hour, update tokens/s) of one run."""
    return r["episodes"] / r["loop_s"] * 3600, (r["tokens"] / r["update_s"] if r["update_s"] else 0.0)


def table_rows(n: int, results: dict[str, dict], limit: dict | None) -> list[tuple[str, str, str]]:
    """results: keys 'collm-<algo>' and 'comlrl-<PEER>'; rows of one episode count."""
    rows = []
    for key, r in results.items():
        if "error" in r:
            rows.append((key, "failed", r["error"]))
            continue
        side, algo = key.split("-", 1)
        eph, tps = rate(r)
        setup = f"setup {r['setup_s']:.0f} s excluded"
        name = f"collm {algo}" if side == "collm" else f"comlrl {algo}"
        rows.append((f"{name} episodes/hour", f"{eph:.0f}", f"{r['episodes']} episodes in {r['loop_s']:.0f} s; {setup}"))
        rows.append((f"{name} update tokens/s", f"{tps:.0f}", f"{r['tokens']} tokens in {r['update_s']:.1f} s, "
                     f"{r['updates']} update call(s)"))
        extra = f"; agent services {r['services_rss_mb']:.0f} MB" if side == "collm" else ""
        rows.append((f"{name} trainer peak RSS MB", f"{r['peak_rss_mb']:.0f}", f"ru_maxrss{extra}"))
    if limit and "error" not in limit:
        rows.append(("forward+backward tokens/s (physical limit)", f"{limit['tokens_per_s']:.0f}",
                     f"full model, batch 1, {limit['sequences']} sequences of our runs' lengths"))
    for algo, peer in PAIRS.items():
        ours, theirs = results.get(f"collm-{algo}"), results.get(f"comlrl-{peer}")
        if ours and "error" not in ours and limit and "error" not in limit:
            rows.append((f"{algo} update tokens/s ÷ forward+backward limit", f"{rate(ours)[1] / limit['tokens_per_s']:.2f}",
                         f"N={n}; LoRA update incl. scoring; 1.00 = the plain fwd+bwd rate"))
            if ours.get("critic_tokens"):
                work = (ours["tokens"] + ours["critic_tokens"]) / ours["update_s"]
                rows.append((f"{algo} update work ÷ forward+backward limit", f"{work / limit['tokens_per_s']:.2f}",
                             f"N={n}; actor {ours['tokens']} + critic {ours['critic_tokens']} history tokens trained "
                             "per update second (the critic's V_old forward not counted)"))
        if not (ours and theirs) or "error" in ours or "error" in theirs:
            continue
        (e1, t1), (e2, t2) = rate(ours), rate(theirs)
        note = f"collm {algo} ÷ comlrl {peer}, N={n}"
        rows.append((f"episodes/hour ÷ comlrl {peer}", f"{e1 / e2:.2f}", f"{note}; > 1: ours faster"))
        rows.append((f"update tokens/s ÷ comlrl {peer}", f"{t1 / t2:.2f}" if t2 else "-", f"{note}; > 1: ours faster"))
        rows.append((f"trainer peak RSS ÷ comlrl {peer}", f"{ours['peak_rss_mb'] / theirs['peak_rss_mb']:.2f}",
                     f"{note}; < 1: ours smaller"))
    return rows


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        spec = json.loads(args.spec.read_text())
        print("RESULT " + json.dumps(WORKERS[args.worker](spec)), flush=True)
        return 0
    if args.create_peer_venv:
        args.peer_python = create_peer_venv()
        if args.only_venv:
            print(f"created {PEER_VENV}: comlrl {peer_version(args.peer_python)}")
            return 0
    python = args.peer_python or default_peer_python()
    version = peer_version(python)
    if version is None:
        print(SKIP)
        return 0

    from bench.common import print_table
    from collm_serve.models import resolve_model

    model_dir = str(resolve_model(MODEL))  # converts the packaged GGUF once; both sides load it
    every = {}
    for n in args.episodes:
        rows_spec = problems(n)
        base = {"max_tokens": args.max_tokens, "batch": min(args.batch, n), "group": args.group,
                "threads": args.threads, "model_dir": model_dir}
        results: dict[str, dict] = {}
        for algo in args.algos:  # one process at a time: each owns the cores and its peak RSS
            peer = PAIRS[algo]
            print(f"N={n}: comlrl {peer} ({python}) ...", file=sys.stderr, flush=True)
            results[f"comlrl-{peer}"] = run_worker(python, "comlrl", {**base, "peer": peer, "problems": rows_spec})
            print(f"N={n}: collm {algo} ...", file=sys.stderr, flush=True)
            results[f"collm-{algo}"] = run_worker(sys.executable, "collm", {**base, "algo": algo, "episodes": n})
        lengths = [x for k, r in results.items() if k.startswith("collm-") for x in r.get("lengths", [])]
        limit = run_worker(sys.executable, "limit", {"threads": args.threads, "lengths": lengths}) if lengths else None
        every[n] = {"results": results, "limit": limit}
        print_table(f"Paper's code (comlrl {version}) vs ours, writing, SmolLM2-135M fp32, N={n} episodes, "
                    f"max {args.max_tokens} new tokens, update every {base['batch']}", table_rows(n, results, limit))
    if args.json:
        for v in every.values():
            for r in v["results"].values():
                r.pop("lengths", None)
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "runs": every}, indent=1))
    failed = [k for v in every.values() for k, r in v["results"].items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
