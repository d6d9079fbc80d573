"""Training throughput and memory: shared-base LoRA (collm_train.Trainer) vs full fine-tuning.

One update = score the batch without grad (log pi, V_old), advantages, then one epoch of
minibatch steps (forward + backward per agent and critic, grad clip, AdamW). Measured on
SmolLM2-135M-Instruct (float32) and a synthetic batch whose token ids come from the real
tokenizer (windows of this repository's text): `--actions` actions of 2 agents, ~`--prompt-len`
prompt + `--response-len` response tokens each, trees of K=2 branches (MC groups for magrpo).

  lora-<algo>  the trainer: one frozen base, a LoRA adapter per agent (+ critic adapters)
  old-<algo>   the same trainer as before issue 14: every action rescored without grad
               (rescore=always) and micro-batches in shuffled order (length_buckets=false)
  full-<algo>  the paper code's layout: one full model copy per agent and per critic, AdamW on
               every weight (cc: 3 copies, dc: 4, magrpo: 2)

The batch is fresh before every timed update (the online loop's steady state: traces sampled by
the version the learner just published), so rescore=auto skips the no-grad actor pass.
"forward+backward limit" (lora/old modes): the plain forward + backward of the same LoRA model
over the same actions, in the same micro-batch sizes sorted by length, loss = sum of response
token log-probs, no RL machinery (no scoring pass, advantages, critics, adapter switches or
optimizer step). update ÷ limit (tokens/CPU-s) is the share of the model's raw speed an update
keeps; with a critic (cc, dc) the update also trains the critics on the histories, so it is
below 1 by construction (issue 14's goal, >= 0.7, is for the actor path, e.g. magrpo).

Each mode runs in its own process, one after the other, so its peak RSS is its own.
tokens/s = (prompt + response tokens of the batch) / update wall time; tokens/CPU-s divides by
the process CPU time instead (1 thread: what an idle core would do; robust to other load on a
shared box), and the LoRA ÷ full ratios use it. "model state" counts parameter + gradient +
AdamW tensors (torch CPU memory; on a GPU the CUDA allocator peak is reported as well).

    python bench/train_throughput.py [--actions 8] [--response-len 64] [--modes lora-magrpo,old-magrpo]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("COLLM_HOME", str(REPO / ".collm"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from bench.common import print_table  # noqa: E402

AGENTS = ["helper", "main"]
ALGOS = ["cc", "dc", "magrpo"]
KINDS = ("lora", "old", "full")
DEFAULT_MODES = "lora-cc,lora-dc,lora-magrpo,old-magrpo,full-cc,full-magrpo"  # full-dc: 4 copies, ~9 GB of AdamW state
MB = 1 << 20


# ---------------------------------------------------------------------------- data
def synthetic_episodes(tokenizer, actions: int, prompt_len: int, response_len: int, seed: int = 0,
                       spread: float = 0.1):
    """Depth-1 trees of K=2 joint actions (2 agents each): actions / 2 turn rows; prompt and
    response lengths uniform within +-spread of prompt_len / response_len."""
    from collm_serve.traces.records import EPISODE_OK, ActionRecord, EpisodeRecord, SamplingRecord, TurnRecord

    text = "\n".join(p.read_text() for p in sorted((REPO / "collm_train").glob("*.py")))
    ids = tokenizer(text)["input_ids"]
    rng = random.Random(seed)

    def window(n: int) -> list[int]:
        start = rng.randrange(0, len(ids) - n)
        return ids[start : start + n]

    rows = max(1, actions // len(AGENTS))
    episodes = []
    for e in range(0, rows, 2):
        turns = []
        for k in range(min(2, rows - e)):
            acts = []
            for a in AGENTS:
                prompt = window(max(1, rng.randint(round(prompt_len * (1 - spread)), round(prompt_len * (1 + spread)))))
                response = window(max(1, rng.randint(round(response_len * (1 - spread)),
                                                     round(response_len * (1 + spread)))))
                acts.append(ActionRecord(agent=a, observation=[], prompt_token_ids=prompt, response_text="",
                                         response_token_ids=response, logprobs=[-1.0] * len(response),
                                         sampling=SamplingRecord(temperature=1.0, top_p=1.0, top_k=0,
                                                                 max_tokens=response_len)))
            turns.append(TurnRecord(turn_index=0, actions=acts, reward=rng.random(), feedback={}, done=True,
                                    branch_index=k, turn_id=10 * e + k, parent_turn_id=None))
        episodes.append(EpisodeRecord(episode_id=f"e{e}", task="bench", split="train", problem_id="p", seed=0,
                                      agents=list(AGENTS), group_size=2, status=EPISODE_OK, turns=turns))
    return episodes


# ---------------------------------------------------------------------------- full fine-tuning
class FullFineTuning:
    """The paper code's layout: a full model per agent (+ per critic), AdamW on all weights.

    Same update as collm_train.Trainer (same losses, minibatches, clipping), no LoRA, no sharing.
    """

    def __init__(self, config, model_dir, agents):
        import torch
        from transformers import AutoModelForCausalLM

        from collm_train.algorithms import get_algorithm
        from collm_train.models import ValueHead

        self.config, self.agents, self.algo = config, list(agents), get_algorithm(config.algo)
        torch.manual_seed(config.seed)

        def load():
            return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()

        self.actors = {a: load() for a in agents}
        names = [] if self.algo.critic is None else ["joint"] if self.algo.critic == "joint" else list(agents)
        self.critics = {}
        for n in names:
            lm = load()
            # a critic is the decoder + a value head; an untied lm_head is dropped with `lm`
            self.critics[n] = (lm.get_decoder(), ValueHead(lm.config.hidden_size, config.value_head_hidden))
        self.opts = [torch.optim.AdamW(m.parameters(), lr=config.lr, weight_decay=config.weight_decay)
                     for m in self.actors.values()]
        self.opts += [torch.optim.AdamW([*dec.parameters(), *head.parameters()], lr=config.critic_lr,
                                        weight_decay=config.weight_decay) for dec, head in self.critics.values()]

    def _values(self, name, histories):
        import torch

        decoder, head = self.critics[name]
        hs = [list(h)[-self.config.critic_max_len :] for h in histories]
        L = max(map(len, hs))
        start = torch.tensor([L - len(h) for h in hs])[:, None]  # (B, 1)
        input_ids = torch.zeros(len(hs), L, dtype=torch.long)
        for i, h in enumerate(hs):
            input_ids[i, L - len(h) :] = torch.tensor(h)
        col = torch.arange(L)
        out = decoder(input_ids=input_ids, attention_mask=(col >= start).long(),
                      position_ids=(col - start).clamp(min=0), use_cache=False)
        return head(out.last_hidden_state[:, -1, :])  # (B,)

    def _critic_of(self, s):
        return "joint" if self.algo.critic == "joint" else s.agent

    def update(self, episodes):
        import torch

        from collm_train.data import build_batch
        from collm_train.logprob import sequence_logprobs
        from collm_train.losses import clipped_surrogate, value_loss

        cfg = self.config
        batch = build_batch(episodes, self.agents, 0, cfg.critic_max_len)
        samples = batch.samples

        def logp(idx):
            ss = [samples[i] for i in idx]
            return sequence_logprobs(self.actors[ss[0].agent], [s.prompt_ids for s in ss], [s.response_ids for s in ss],
                                     [s.temperature for s in ss], [s.top_k for s in ss], [s.top_p for s in ss]).seq_logp

        by_agent = {a: [i for i, s in enumerate(samples) if s.agent == a] for a in self.agents}
        by_critic: dict[str, list[int]] = {}
        for i, s in enumerate(samples):
            if self.algo.critic:
                by_critic.setdefault(self._critic_of(s), []).append(i)
        with torch.no_grad():
            b_logp_old = torch.zeros(len(samples))
            for idx in by_agent.values():
                if idx:
                    b_logp_old[idx] = logp(idx)
            b_values = None
            if self.algo.critic:
                b_values = torch.zeros(len(samples))
                for name, idx in by_critic.items():
                    b_values[idx] = self._values(name, [self.algo.history(samples[i]) for i in idx])
        b_adv, b_v_target = self.algo.advantages(batch, b_values, cfg)

        perm = torch.randperm(len(samples)).tolist()
        for start in range(0, len(perm), cfg.minibatch_size):
            mb_idx = perm[start : start + cfg.minibatch_size]
            for opt in self.opts:
                opt.zero_grad(set_to_none=True)
            for agent in self.agents:
                a_idx = [i for i in mb_idx if samples[i].agent == agent]
                if a_idx:
                    pg, _, _ = clipped_surrogate(logp(a_idx), b_logp_old[a_idx], b_adv[a_idx], cfg.clip_eps)
                    (pg.sum() / len(mb_idx)).backward()
            for name in self.critics:
                c_idx = [i for i in mb_idx if self._critic_of(samples[i]) == name]
                if c_idx:
                    v = self._values(name, [self.algo.history(samples[i]) for i in c_idx])
                    (cfg.value_coef * value_loss(v, b_v_target[c_idx], 1.0).sum() / len(mb_idx)).backward()
            for opt in self.opts:
                params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
                if params:
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                    opt.step()

    def optimizers(self):
        return self.opts


# ---------------------------------------------------------------------------- one mode, in its own process
def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def _state_mb(opts) -> tuple[float, int]:
    """Bytes of parameters (+ grads + AdamW state) the optimizers own, and how many parameters."""
    import torch

    total, n = 0, 0
    for opt in opts:
        for g in opt.param_groups:
            for p in g["params"]:
                n += p.numel()
                total += p.numel() * p.element_size() * (2 if p.grad is not None else 1)
                total += sum(t.numel() * t.element_size() for t in opt.state.get(p, {}).values()
                             if isinstance(t, torch.Tensor))
    return total / MB, n


def forward_backward_limit(learner, episodes, micro: int) -> tuple[float, float]:
    """(wall s, CPU s) of a plain forward + backward over the actions: one LoRA adapter of the
    learner's model, chunks of `micro` sorted by length, loss = -sum of response log-probs."""
    import torch

    from collm_train.logprob import pad_batch

    acts = sorted((a for e in episodes for t in e.turns for a in t.actions),
                  key=lambda a: len(a.prompt_token_ids) + len(a.response_token_ids))
    agent, actor = next(iter(learner.models.actors.items()))
    model = actor.host.activate(agent)
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(0, len(acts), micro):
        chunk = acts[i : i + micro]
        ids, attn, pos, mask = pad_batch([a.prompt_token_ids for a in chunk], [a.response_token_ids for a in chunk])
        R = mask.shape[1]
        logits = model(input_ids=ids, attention_mask=attn, position_ids=pos, logits_to_keep=R + 1,
                       use_cache=False).logits[:, :-1]  # (B, R, V)
        logp = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, -R:, None]).squeeze(-1)  # (B, R)
        (-(logp * mask).sum()).backward()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    for p in actor.params():
        p.grad = None
    return wall, cpu


def worker(mode: str, args) -> dict:
    import torch
    from transformers import AutoTokenizer

    from collm_serve.models import embedded_model_dir
    from collm_train.config import TrainConfig
    from collm_train.trainer import Trainer

    if args.threads:
        torch.set_num_threads(args.threads)  # the Trainer sets config.threads (the same) itself
    kind, algo = mode.split("-", 1)
    model_dir = embedded_model_dir()
    episodes = synthetic_episodes(AutoTokenizer.from_pretrained(model_dir), args.actions, args.prompt_len,
                                  args.response_len, spread=args.spread)
    # preset collm: this bench times the PPO-clipped loss on every action (its own update loop)
    old = dict(rescore="always", length_buckets=False) if kind == "old" else {}
    cfg = TrainConfig(algo=algo, preset="collm", minibatch_size=args.minibatch or args.actions, lr=1e-5,
                      critic_lr=1e-5, micro_batch_size=args.micro, threads=args.threads or None, **old)
    rss0 = _rss_mb()
    if kind in ("lora", "old"):
        learner = Trainer(cfg, model_dir, AGENTS, base_model_id="bench")
        opts = learner._opts()
        frozen = sum(p.numel() for p in learner.models.frozen_params().values())
    else:
        learner = FullFineTuning(cfg, model_dir, AGENTS)
        opts = learner.optimizers()
        frozen = 0
    rss_loaded = _rss_mb()
    tokens = sum(len(a.prompt_token_ids) + len(a.response_token_ids)
                 for e in episodes for t in e.turns for a in t.actions)
    times, cpu = [], []
    for _ in range(args.warmup + args.updates):
        if kind != "full":
            learner.dirty = False  # as if the learner had just published the version that sampled the batch
        t0, c0 = time.perf_counter(), time.process_time()
        learner.update(episodes)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    times, cpu = times[args.warmup :], cpu[args.warmup :]
    state_mb, n_trained = _state_mb(opts)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    limit = {}
    if kind != "full":
        runs = [forward_backward_limit(learner, episodes, args.micro or cfg.minibatch_size)
                for _ in range(args.warmup + args.updates)][args.warmup :]
        lw, lc = min(r[0] for r in runs), min(r[1] for r in runs)
        limit = {"limit_s": lw, "limit_tokens_per_s": tokens / lw, "limit_cpu_s": lc, "limit_tokens_per_cpu_s": tokens / lc}
    out = {**limit,
        "mode": mode, "tokens": tokens, "update_s": min(times), "tokens_per_s": tokens / min(times),
        "cpu_s": min(cpu), "tokens_per_cpu_s": tokens / min(cpu),
        "peak_rss_mb": peak,
        "loaded_mb": rss_loaded - rss0, "state_mb": state_mb, "trained_params": n_trained,
        "frozen_params": frozen, "threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        out["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / MB
    return out


# ---------------------------------------------------------------------------- driver
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--actions", type=int, default=8, help="actions in the batch (2 agents, trees of K=2)")
    ap.add_argument("--prompt-len", type=int, default=200)
    ap.add_argument("--response-len", type=int, default=64)
    ap.add_argument("--spread", type=float, default=0.1,
                    help="prompt and response lengths uniform within +-spread of their mean (0.9: very mixed)")
    ap.add_argument("--minibatch", type=int, default=None, help="samples per optimizer step (default: all)")
    ap.add_argument("--micro", type=int, default=None, help="samples per forward (default: the minibatch)")
    ap.add_argument("--updates", type=int, default=1, help="timed updates per mode (the fastest counts)")
    ap.add_argument("--warmup", type=int, default=0, help="untimed updates first")
    # 1 by default: on a shared box, OpenMP threads spin-wait for cores other processes hold and
    # an update got ~18x slower with 2 threads than with 1 (load 11 on 2 cores)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (0: TrainConfig's default, every core this process may use)")
    ap.add_argument("--modes", default=DEFAULT_MODES,
                    help=f"comma-separated <kind>-<algo>, kind in {KINDS}, algo in {ALGOS}")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args.worker, args)))
        return

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        kind, _, algo = m.partition("-")
        if kind not in KINDS or algo not in ALGOS:
            ap.error(f"mode {m!r}: use <kind>-<algo> with kind in {KINDS}, algo in {ALGOS}")
    results, failed = {}, {}
    passthrough = [f"--actions={args.actions}", f"--prompt-len={args.prompt_len}",
                   f"--response-len={args.response_len}", f"--spread={args.spread}", f"--updates={args.updates}", f"--warmup={args.warmup}",
                   f"--threads={args.threads}"]
    if args.minibatch:
        passthrough.append(f"--minibatch={args.minibatch}")
    if args.micro:
        passthrough.append(f"--micro={args.micro}")
    for m in modes:  # one at a time: each owns the cores and its peak RSS
        proc = subprocess.run([sys.executable, __file__, "--worker", m, *passthrough], capture_output=True, text=True)
        line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            # -9 without a traceback: the kernel's OOM killer (full fine-tuning needs ~16 bytes/weight)
            why = "killed (SIGKILL: out of memory?)" if proc.returncode == -9 else f"exit {proc.returncode}"
            failed[m] = why
            print(f"{m}: {why}\n{proc.stderr[-2000:]}", file=sys.stderr)
            continue
        results[m] = json.loads(line[len("RESULT ") :])
        r = results[m]
        print(f"{m}: {r['tokens_per_cpu_s']:.0f} tok/CPU-s, peak RSS {r['peak_rss_mb']:.0f} MB", file=sys.stderr)

    rows = []
    for m, r in results.items():
        note = f"{r['trained_params'] / 1e6:.2f}M trained, {r['frozen_params'] / 1e6:.0f}M frozen"
        rows.append((f"{m} tokens/s", f"{r['tokens_per_s']:.0f}",
                     f"{r['tokens']} tokens in {r['update_s']:.1f} s wall"))
        rows.append((f"{m} tokens/CPU-s", f"{r['tokens_per_cpu_s']:.0f}",
                     f"{r['cpu_s']:.1f} CPU-s (robust to other load)"))
        rows.append((f"{m} peak RSS MB", f"{r['peak_rss_mb']:.0f}", f"model load +{r['loaded_mb']:.0f} MB; {note}"))
        rows.append((f"{m} model state MB", f"{r['state_mb']:.0f}", "trained params + grads + AdamW state"
                     + (f"; CUDA peak {r['cuda_peak_mb']:.0f} MB" if "cuda_peak_mb" in r else "")))
        if "limit_tokens_per_cpu_s" in r:
            rows.append((f"{m} forward+backward limit tokens/CPU-s", f"{r['limit_tokens_per_cpu_s']:.0f}",
                         f"{r['limit_tokens_per_s']:.0f} tokens/s wall; plain LoRA forward+backward, same actions"))
            rows.append((f"{m}: update ÷ forward+backward limit", f"{r['tokens_per_cpu_s'] / r['limit_tokens_per_cpu_s']:.2f}",
                         f"tokens/CPU-s (wall: {r['tokens_per_s'] / r['limit_tokens_per_s']:.2f}); goal >= 0.7"))
    rows += [(m, "failed", why) for m, why in failed.items()]
    for algo in ALGOS:
        lo, ol = results.get(f"lora-{algo}"), results.get(f"old-{algo}")
        if lo and ol:
            rows.append((f"{algo}: this trainer ÷ before issue 14, tokens/CPU-s",
                         f"{lo['tokens_per_cpu_s'] / ol['tokens_per_cpu_s']:.2f}",
                         f"wall {lo['tokens_per_s'] / ol['tokens_per_s']:.2f}; rescore auto + length buckets"))
        lo, fu = results.get(f"lora-{algo}"), results.get(f"full-{algo}")
        if lo and fu:
            speed = lo["tokens_per_cpu_s"] / fu["tokens_per_cpu_s"]
            rows.append((f"{algo}: LoRA ÷ full tokens/CPU-s", f"{speed:.2f}", "> 1: LoRA faster"))
            rows.append((f"{algo}: LoRA ÷ full peak RSS", f"{lo['peak_rss_mb'] / fu['peak_rss_mb']:.2f}",
                         "< 1: LoRA smaller"))
    threads = next(iter(results.values()))["threads"] if results else 0
    print_table(f"Training update, SmolLM2-135M fp32, {args.actions} actions × ~{args.prompt_len}"
                f"+{args.response_len} tokens, {threads} torch thread(s)", rows)


if __name__ == "__main__":
    main()
