"""Issue 28 item 3: the LLM miniature. Does CoLLM-CC beat Monte Carlo on long horizons?

The pre-registered design and decision rule are in docs/sample-efficiency.md (Part 1); this
runner implements exactly that and nothing more, so the rule, not the code, decides what a
result means. Policy: SmolLM2-135M-Instruct (collm_serve.models.embedded_model_dir()), LoRA
actors (and LoRA critics for cc/dc), trained through the project's in-process path: `Trainer`,
`trainer.sample` for rollouts, every episode (a chain, or a K-ary tree for magrpo) written to a
SQLite `TraceStore` turn by turn and read back with `get_episode` before `trainer.update`. The
task is `tally` (collm_serve/tasks/tally.py), variants long / short (required) and sparse.

Why cell by cell: the whole grid takes hours on 2 cores, so each (variant, algorithm, lr, seed)
cell is saved as its own JSON under bench/results/llm_miniature/ the moment it finishes and
skipped when the runner starts again; the grid completes over several sittings.

Stages: `tune` runs every lr of LR_GRID on TUNE_SEED; `eval` runs the evaluation seeds at the lr
with the best tuning AUC of that (variant, algorithm) (it waits for the tuning cells).
Equal budgets: every cell of a variant gets the same number of joint actions, sized by
`--pilot` from the measured cost (pilot.json) or given with --budget.

    python bench/llm_miniature.py --pilot               # base return distribution + cost, sizes B_v
    python bench/llm_miniature.py                       # tune + eval, resumable
    python bench/llm_miniature.py --stage tune --variants long --algos cc
    python bench/llm_miniature.py --report              # tables + verdict (llm_miniature_stats)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("COLLM_HOME", str(REPO / ".collm"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = REPO / "bench" / "results" / "llm_miniature"
AGENTS = ["alice", "bob"]
ALGOS = ["cc", "dc", "magrpo"]
VARIANTS = ["long", "short"]  # required; "sparse" is optional (--variants long,short,sparse)
LR_GRID = [1e-4, 3e-4, 1e-3]
TUNE_SEED = 100
EVAL_SEEDS = [0, 1, 2]  # --seeds 5 adds 3, 4
FRACTIONS = [0.0, 0.25, 0.5, 0.75, 1.0]
EVAL_N = 16
EVAL_GEN_SEED = 12345  # common random numbers: every algorithm and budget point sees the same draws
TEMPERATURE, TOP_P, MAX_NEW = 0.7, 0.9, 6
# the paper's schedule each variant borrows: multi-turn Minecraft, or one-turn TLDR
SCHEDULE = {"long": "housebuild", "sparse": "housebuild", "short": "writing"}
CELL_MAX_S = 900  # each cell <= 15 min with the machine to itself
GRID_MAX_S = 5 * 3600
REQUIRED_CELLS = len(VARIANTS) * len(ALGOS) * (len(LR_GRID) + len(EVAL_SEEDS))


def train_config(variant: str, algo: str, lr: float, seed: int, threads: int | None = None):
    """The paper's preset for the borrowed schedule; what the miniature overrides is the same for
    every algorithm (docs/sample-efficiency.md, 'Algorithms and schedules')."""
    from collm_train.config import TrainConfig

    return TrainConfig(algo=algo, preset="paper", task=SCHEDULE[variant], lr=lr, critic_lr=lr, seed=seed,
                       temperature=TEMPERATURE, top_p=TOP_P, top_k=0, max_new_tokens=MAX_NEW,
                       reward_shift=0.0, early_stop_threshold=None, threads=threads)


def units_per_update(cfg) -> tuple[int, int]:
    """(problems per update call, K): cc/dc one episode per pool slot (the paper updates when its
    buffer holds rollout_buffer_size samples), magrpo one problem tree of K per node."""
    k = cfg.num_generations or 1
    return (1, k) if k > 1 else (cfg.rollout_buffer_size or 1, 1)


def joint_actions_per_problem(turns: int, k: int) -> int:
    return sum(k ** (t + 1) for t in range(turns))


def unit_lcm(variant: str) -> int:
    """Budgets are multiples of every algorithm's update size, so no algorithm stops short."""
    from collm_serve.tasks import get_task

    turns = get_task("tally", variant=variant).num_turns
    sizes = []
    for algo in ALGOS:
        n, k = units_per_update(train_config(variant, algo, 1e-4, 0))
        sizes.append(n * joint_actions_per_problem(turns, k))
    return math.lcm(*sizes)


# ------------------------------------------------------------------------------ rollouts
@dataclass
class _Node:
    i: int  # which problem
    parent_turn_id: int | None
    ep: object  # TaskEpisode
    ret: float  # reward so far on this path


class Team:
    """The model, tokenizer and task of one cell; turns chat histories into token ids."""

    def __init__(self, model_dir: Path, variant: str):
        from transformers import AutoTokenizer

        from collm_serve.tasks import get_task

        self.model_dir = Path(model_dir)
        self.tok = AutoTokenizer.from_pretrained(self.model_dir)
        self.task = get_task("tally", variant=variant)
        self.variant = variant

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        from collm_serve.models import chat_prompt_ids

        return chat_prompt_ids(self.tok, messages)

    def play(self, trainer, problems, k: int, gen, store=None, seed: int = 0) -> dict:
        """Plays `problems` as K-ary trees (k = 1: chains), every agent's turn batched across the
        open nodes. With a store, every turn is written as it is played and the finished episodes
        are returned as the store reads them back. Returns episodes, per-problem mean leaf return,
        joint actions, sampled tokens and how many had log-prob exactly 0 (a one-token nucleus)."""
        from collm_serve.traces.records import EPISODE_OK, ActionRecord, EpisodeRecord, SamplingRecord, TurnRecord

        sampling = SamplingRecord(temperature=TEMPERATURE, top_p=TOP_P, top_k=0, max_tokens=MAX_NEW)
        ids = []
        if store is not None:
            for p in problems:
                ids.append(store.begin_episode(EpisodeRecord(
                    episode_id="", task="tally", split=p.split, problem_id=p.problem_id, seed=seed,
                    agents=list(AGENTS), group_size=k, protocol="parallel", metadata={"variant": self.variant})))
        nodes = [_Node(i, None, self.task.new_episode(p), 0.0) for i, p in enumerate(problems)]
        leaves: list[list[float]] = [[] for _ in problems]
        joint, tokens, zeros = 0, 0, 0
        eos = self.tok.eos_token_id
        while nodes:
            rows = [(n, b) for n in nodes for b in range(k)]
            out = {}
            for agent in AGENTS:
                obs = {id(n): n.ep.observation(agent) for n in nodes}
                pids = {id(n): self.prompt_ids(obs[id(n)]) for n in nodes}
                prompts = [pids[id(n)] for n, _ in rows]
                resp, lps = trainer.sample(agent, prompts, MAX_NEW, temperature=TEMPERATURE, top_p=TOP_P,
                                           eos_id=eos, generator=gen)
                out[agent] = (obs, prompts, resp, lps)
                tokens += sum(len(lp) for lp in lps)
                zeros += sum(v == 0.0 for lp in lps for v in lp)
            children = []
            for r, (n, b) in enumerate(rows):
                texts = {a: self.tok.decode(out[a][2][r], skip_special_tokens=True) for a in AGENTS}
                ep = n.ep.clone()
                t = ep.turn
                res = ep.step(texts, early_stop=False)
                joint += 1
                turn_id = None
                if store is not None:
                    actions = [ActionRecord(agent=a, observation=out[a][0][id(n)], prompt_token_ids=out[a][1][r],
                                            response_text=texts[a], response_token_ids=out[a][2][r],
                                            logprobs=out[a][3][r], adapter_version=trainer.version,
                                            sampling=sampling) for a in AGENTS]
                    turn_id = store.append_turn(ids[n.i], TurnRecord(
                        turn_index=t, actions=actions, reward=res.reward, feedback=res.feedback, done=res.done,
                        branch_index=b, parent_turn_id=n.parent_turn_id, info=res.info))
                if res.done:
                    leaves[n.i].append(n.ret + res.reward)
                else:
                    children.append(_Node(n.i, turn_id, ep, n.ret + res.reward))
            nodes = children
        returns = [sum(v) / len(v) for v in leaves]  # equal-weight leaves: the tree-averaged return
        episodes = []
        if store is not None:
            for i, eid in enumerate(ids):
                store.finish_episode(eid, EPISODE_OK, returns[i])
            episodes = [store.get_episode(eid) for eid in ids]
        return {"episodes": episodes, "returns": returns, "joint_actions": joint, "tokens": tokens,
                "zero_logprob_tokens": zeros}

    def evaluate(self, trainer, problems) -> list[float]:
        """Normalised return of one sampled episode per eval problem, fixed generator seed."""
        import torch

        from collm_serve.tasks.tally import best_return

        gen = torch.Generator().manual_seed(EVAL_GEN_SEED)
        res = self.play(trainer, problems, 1, gen)
        return [r / best_return(p) for r, p in zip(res["returns"], problems)]


def eval_problems(task) -> list:
    """EVAL_N eval-split instances spread evenly over the split (fixed, the same for every cell)."""
    ev = task.problems("eval")
    step = len(ev) / EVAL_N
    return [ev[int(i * step)] for i in range(min(EVAL_N, len(ev)))]


# ------------------------------------------------------------------------------ one cell
def cell_name(variant: str, algo: str, lr: float, seed: int) -> str:
    return f"{variant}-{algo}-lr{lr:g}-s{seed}.json"


def run_cell(variant: str, algo: str, lr: float, seed: int, budget: int, model_dir: Path, out_dir: Path,
             threads: int | None = None, eval_n: int | None = None, extra: dict | None = None) -> dict:
    """Train one cell to `budget` joint actions, evaluating at FRACTIONS; write its JSON atomically."""
    import tempfile

    import torch

    from collm_serve.traces import TraceStore
    from collm_train.trainer import Trainer

    t0 = time.perf_counter()
    cfg = train_config(variant, algo, lr, seed, threads)
    team = Team(model_dir, variant)
    trainer = Trainer(cfg, str(model_dir), AGENTS, base_model_id=model_dir.name)
    n_prob, k = units_per_update(cfg)
    ev_problems = eval_problems(team.task)[: eval_n or EVAL_N]
    train = team.task.problems("train")
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    ja, updates, curve, log = 0, 0, [], []
    timing = {"sample_s": 0.0, "update_s": 0.0, "eval_s": 0.0}
    pending = list(FRACTIONS)

    def _eval():
        t = time.perf_counter()
        per = team.evaluate(trainer, ev_problems)
        timing["eval_s"] += time.perf_counter() - t
        curve.append({"fraction": pending.pop(0), "joint_actions": ja, "updates": updates,
                      "eval_return": sum(per) / len(per), "per_instance": per})

    _eval()  # fraction 0: the base model
    with tempfile.TemporaryDirectory(prefix="collm-llmmini-") as tmp, \
            TraceStore(Path(tmp) / "traces.sqlite", synchronous="NORMAL") as store:
        while ja < budget:
            t = time.perf_counter()
            played = team.play(trainer, [rng.choice(train) for _ in range(n_prob)], k, gen, store, seed)
            timing["sample_s"] += time.perf_counter() - t
            t = time.perf_counter()
            m = trainer.update(played["episodes"])
            timing["update_s"] += time.perf_counter() - t
            ja += played["joint_actions"]
            updates += 1
            log.append({"joint_actions": ja, "train_return": sum(played["returns"]) / len(played["returns"]),
                        "explained_variance": m.get("charts/explained_variance"),
                        "adv_std": m.get("charts/adv_std"), "actor_loss": m.get("losses/actor"),
                        "critic_loss": m.get("losses/critic"), "optimizer_steps": m.get("charts/steps"),
                        "nucleus_zero_frac": played["zero_logprob_tokens"] / max(played["tokens"], 1)})
            while pending and ja >= pending[0] * budget:
                _eval()
    result = {"variant": variant, "algo": algo, "lr": lr, "seed": seed, "budget_joint_actions": budget,
              "joint_actions": ja, "updates": updates, "curve": curve, "updates_log": log,
              "config": cfg.model_dump(mode="json"), "model": model_dir.name, "eval_n": len(ev_problems),
              "seconds": time.perf_counter() - t0, **timing, "load_avg_end": os.getloadavg(),
              "finished_at": time.strftime("%Y-%m-%d %H:%M:%S"), **(extra or {})}
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / cell_name(variant, algo, lr, seed)
    tmp_path = path.with_suffix(".json.tmp")
    tmp_path.write_text(json.dumps(result, indent=1, default=str))
    tmp_path.replace(path)  # atomic: a cell is either finished on disk or absent
    return result


def auc(curve: list[dict]) -> float:
    """Trapezoidal area of the normalised eval return over budget fraction [0, 1]."""
    pts = sorted((c["fraction"], c["eval_return"]) for c in curve)
    return sum((x1 - x0) * (y0 + y1) / 2 for (x0, y0), (x1, y1) in zip(pts, pts[1:]))


def best_lr(out_dir: Path, variant: str, algo: str) -> float | None:
    """The tuning lr with the highest AUC on TUNE_SEED; None until every tuning cell exists."""
    scores = {}
    for lr in LR_GRID:
        p = out_dir / cell_name(variant, algo, lr, TUNE_SEED)
        if not p.exists():
            return None
        scores[lr] = auc(json.loads(p.read_text())["curve"])
    return max(LR_GRID, key=lambda lr: (scores[lr], -lr))  # ties: the smaller lr


def plan(out_dir: Path, variants: list[str], algos: list[str], stage: str, seeds: list[int]) -> list[tuple]:
    """Cells still to run, in order: (variant, algo, lr, seed, stage)."""
    cells = []
    for v in variants:
        for a in algos:
            if stage in ("tune", "all"):
                cells += [(v, a, lr, TUNE_SEED, "tune") for lr in LR_GRID]
            if stage in ("eval", "all"):
                cells += [(v, a, None, s, "eval") for s in seeds]
    return cells


def run_grid(args, out_dir: Path, model_dir: Path) -> int:
    budgets = dict(args.budget) if args.budget else _pilot_budgets(out_dir)
    seeds = EVAL_SEEDS + ([3, 4] if args.seeds >= 5 else [])
    done = skipped = waiting = 0
    for v, a, lr, seed, stage in plan(out_dir, args.variants, args.algos, args.stage, seeds):
        if v not in budgets:
            sys.exit(f"no budget for variant {v!r}: run --pilot first, or give --budget {v}=N")
        if lr is None:
            lr = best_lr(out_dir, v, a)
            if lr is None:
                print(f"{v} {a} seed {seed}: waits for its tuning cells", flush=True)
                waiting += 1
                continue
        if (out_dir / cell_name(v, a, lr, seed)).exists():
            skipped += 1
            continue
        r = run_cell(v, a, lr, seed, budgets[v], model_dir, out_dir, args.threads, args.eval_n, {"stage": stage})
        done += 1
        print(f"{v:6s} {a:6s} lr {lr:g} seed {seed:3d} [{stage}]: AUC {auc(r['curve']):.3f}, eval "
              + " ".join(f"{c['eval_return']:.3f}" for c in r["curve"]) + f" ({r['seconds']:.0f} s)", flush=True)
    print(f"cells run {done}, already finished {skipped}, waiting for tuning {waiting}")
    return 0


def _pilot_budgets(out_dir: Path) -> dict[str, int]:
    p = out_dir / "pilot.json"
    return json.loads(p.read_text()).get("budgets", {}) if p.exists() else {}


# ------------------------------------------------------------------------------ pilot
def pilot(model_dir: Path, out_dir: Path, variants: list[str], episodes: int, threads: int | None) -> dict:
    """The base model's return distribution on train instances (does it vary?) and the measured
    cost of one update cycle per algorithm, from which each variant's budget B_v is sized."""
    import statistics

    import torch

    from collm_serve.traces import TraceStore
    from collm_train.trainer import Trainer

    out = {"model": model_dir.name, "episodes": episodes, "load_avg_start": os.getloadavg(),
           "cores": len(os.sched_getaffinity(0)), "variants": {}}
    cell_share = min(CELL_MAX_S, GRID_MAX_S / REQUIRED_CELLS)
    for v in variants:
        team = Team(model_dir, v)
        base = Trainer(train_config(v, "cc", 1e-4, 0, threads), str(model_dir), AGENTS, base_model_id=model_dir.name)
        rng = random.Random(0)
        probs = [rng.choice(team.task.problems("train")) for _ in range(episodes)]
        t = time.perf_counter()
        res = team.play(base, probs, 1, torch.Generator().manual_seed(0))
        sample_s = time.perf_counter() - t
        from collm_serve.tasks.tally import best_return

        norm = [r / best_return(p) for r, p in zip(res["returns"], probs)]
        t = time.perf_counter()
        ev = team.evaluate(base, eval_problems(team.task))
        eval_s = time.perf_counter() - t
        row = {"base_return_norm": {"mean": statistics.fmean(norm), "std": statistics.pstdev(norm),
                                    "min": min(norm), "max": max(norm),
                                    "frac_above_floor": sum(x > 0 for x in norm) / len(norm),
                                    "frac_ge_half": sum(x >= 0.5 for x in norm) / len(norm)},
               "base_eval_return_norm": statistics.fmean(ev),
               "sample_s_per_episode": sample_s / episodes,
               "nucleus_zero_frac": res["zero_logprob_tokens"] / max(res["tokens"], 1),
               "eval_pass_s": eval_s, "cost": {}}
        out["variants"][v] = row
        _save_pilot(out_dir, out, partial=True)  # a slow machine keeps what it measured
        print(json.dumps({v: row}, indent=1), flush=True)
        del base
        for a in ALGOS:
            cfg = train_config(v, a, 1e-4, 0, threads)
            tr = Trainer(cfg, str(model_dir), AGENTS, base_model_id=model_dir.name)
            n_prob, k = units_per_update(cfg)
            with TraceStore(out_dir / f".pilot-{v}-{a}.sqlite", synchronous="NORMAL") as store:
                t = time.perf_counter()
                played = team.play(tr, probs[:n_prob], k, torch.Generator().manual_seed(1), store)
                s = time.perf_counter() - t
                t = time.perf_counter()
                m = tr.update(played["episodes"])
                u = time.perf_counter() - t
            for suffix in ("", "-wal", "-shm"):
                Path(str(out_dir / f".pilot-{v}-{a}.sqlite") + suffix).unlink(missing_ok=True)
            ja = played["joint_actions"]
            row["cost"][a] = {"joint_actions": ja, "sample_s": s, "update_s": u, "s_per_joint_action": (s + u) / ja,
                              "actor_tokens": m.get("charts/actor_tokens"), "critic_tokens": m.get("charts/critic_tokens")}
            print(f"pilot {v} {a}: {ja} joint actions, sample {s:.1f} s, update {u:.1f} s", flush=True)
            del tr
            _save_pilot(out_dir, out, partial=True)
        worst = max(c["s_per_joint_action"] for c in row["cost"].values())
        fixed = 30 + len(FRACTIONS) * eval_s  # model load + the eval passes
        lcm = unit_lcm(v)
        row["budget"] = max(lcm, int((cell_share - fixed) / worst) // lcm * lcm)
        row["cell_estimate_s"] = fixed + row["budget"] * worst
        print(json.dumps({v: {"budget": row["budget"], "cell_estimate_s": row["cell_estimate_s"]}}), flush=True)
    out["budgets"] = {v: r["budget"] for v, r in out["variants"].items()}
    out["cell_share_s"] = cell_share
    _save_pilot(out_dir, out, partial=False)
    return out


def _save_pilot(out_dir: Path, out: dict, partial: bool) -> None:
    """pilot.json, rewritten after every measurement; `budgets` only once complete, so a partial
    pilot never sizes a grid."""
    out = dict(out, partial=partial, load_avg_now=os.getloadavg(), measured_at=time.strftime("%Y-%m-%d %H:%M:%S"))
    if partial:
        out.pop("budgets", None)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "pilot.json.tmp").write_text(json.dumps(out, indent=1))
    (out_dir / "pilot.json.tmp").replace(out_dir / "pilot.json")


# ------------------------------------------------------------------------------ main
def _budget_arg(s: str) -> tuple[str, int]:
    v, n = s.split("=")
    return v, int(n)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pilot", action="store_true", help="base return distribution + cost; sizes the budgets")
    ap.add_argument("--pilot-episodes", type=int, default=32)
    ap.add_argument("--report", action="store_true", help="tables and verdict from the saved cells")
    ap.add_argument("--stage", choices=["tune", "eval", "all"], default="all")
    ap.add_argument("--variants", type=lambda s: s.split(","), default=VARIANTS)
    ap.add_argument("--algos", type=lambda s: s.split(","), default=ALGOS)
    ap.add_argument("--seeds", type=int, default=3, help="evaluation seeds: 3 (0-2) or 5 (0-4)")
    ap.add_argument("--budget", type=_budget_arg, action="append", help="variant=joint actions (overrides the pilot)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--eval-n", type=int, default=None, help="eval instances (default 16; tests use fewer)")
    ap.add_argument("--model", type=Path, default=None, help="HF model folder (default: the embedded SmolLM2)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    bad = [v for v in args.variants if v not in ("long", "short", "sparse")] + [a for a in args.algos if a not in ALGOS]
    if bad:
        ap.error(f"unknown variant/algorithm {bad}")
    if args.report:
        from bench.llm_miniature_stats import report

        print(report(args.out))
        return 0
    if args.model is None:
        from collm_serve.models import embedded_model_dir

        args.model = embedded_model_dir()
    if args.pilot:
        pilot(args.model, args.out, args.variants, args.pilot_episodes, args.threads)
        return 0
    return run_grid(args, args.out, args.model)


if __name__ == "__main__":
    sys.exit(main())
