"""The shared update loop of every algorithm (CleanRL-style: b_ = batch, mb_ = minibatch).

    trainer = Trainer(TrainConfig(algo="cc"), "HuggingFaceTB/SmolLM2-135M-Instruct", ["helper", "main"])
    metrics = trainer.update(episodes)           # list[EpisodeRecord] from the trace store
    trainer.save_adapters("adapters")            # the team's next version (manifest.next_version)

One `update`:
  1. samples per (agent, turn) from the traces (data.build_batch)
  2. without grad: the learner's log pi of every STALE logged action (rho vs behaviour -> ESS;
     a fresh action's is its logged behaviour log-prob, config.rescore), the reference
     log-probs (if kl_coef), and V_old(h) of every distinct history (critic algorithms; the
     TD(0) / GAE bootstrap V_old(h_{t+1}) is a child's V_old(h), from the same pass)
  3. adv / v_target from the algorithm class (TD(0), GAE, or Monte Carlo over the tree), then
     standardised as config.adv_norm says
  4. the steps schedule.plan_steps lists (epochs x shuffled minibatches, or the paper's per-agent
     pools, config.rollout_buffer_size): per agent, actor loss + kl, that agent's MEAN over its
     samples in the minibatch (CoMLRL steps each agent on the mean of its own batch,
     maac.py:881, iac.py:957, magrpo.py:1369-1376); per critic, c_v * its mean (y - V)^2
     (maac.py:882-883); clip grad norms if configured; step.
     Each agent's (critic's) minibatch samples are sorted by length and cut into micro-batches
     (config.length_buckets, micro_batch_size), so a forward pads little; the loss weights do
     not depend on the cut, so the gradient is the same sum.

Actor loss per action (config.ratio_on): a FRESH action (served by the weights the learner
holds: same adapter version, no update since it was published) gets the paper's on-policy
-A * log pi (maac.py:875, iac.py:932, magrpo.py:1481); a STALE one (another version, or the
learner moved since publishing) gets the truncated weight -min(rho, c) * A * log pi
(truncated_is) or PPO clipping (clip_eps), rho = pi_learner / pi_behaviour from the logged
log-probs. With ratio_on='all' every action gets the ratio loss. From the second optimizer step
of an update on, the learner has moved away from every action's pi_old (the log-prob before the
update, as PPO's logp_old), so every action is stale and gets the ratio loss.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from collm_serve.adapters.manifest import next_version, write_manifest
from collm_serve.traces.records import EpisodeRecord
from collm_train.algorithms import get_algorithm
from collm_train.config import TrainConfig
from collm_train.data import ActionSample, Batch, build_batch, check_group_sizes
from collm_train.distributed import init_distributed
from collm_train.losses import (
    clipped_value_loss,
    effective_sample_size_log,
    kl_k3,
    policy_loss,
    value_loss,
)
from collm_train.models import CRITIC_PREFIX, Critic, TeamModels
from collm_train.returns import explained_variance
from collm_train.schedule import chunks as _chunks
from collm_train.schedule import plan_steps

CHECKPOINT_FORMAT = "collm-train-ckpt/1"


def _sample_len(s: ActionSample) -> int:
    """Tokens of one actor forward row (logprob.pad_batch pads prompts and responses)."""
    return len(s.prompt_ids) + len(s.response_ids)


def _check_agents(agents: Sequence[str]) -> list[str]:
    agents = list(agents)
    if not agents:
        raise ValueError("agents is empty; name at least one agent to train")
    if len(set(agents)) != len(agents):
        raise ValueError(f"agent names must be unique, got {agents}")
    for a in agents:
        # peft: '.' splits module paths, a name inside "lora_" collides with the key prefix,
        # "default" is written to the folder root; the manifest forbids '/' and '@'
        if not a or any(c in a for c in "./@") or a in "lora_" or a == "default" or a.startswith(CRITIC_PREFIX):
            raise ValueError(
                f"agent name {a!r} must be non-empty, without '.', '/' or '@', not part of 'lora_', "
                f"not 'default' and not start with {CRITIC_PREFIX!r}"
            )
    return agents


class Trainer:
    """Actors (one LoRA adapter per agent) and critics of one team, and their optimizers."""

    def __init__(
        self,
        config: TrainConfig,
        base_model: str | os.PathLike | torch.nn.Module,
        agents: Sequence[str],
        *,
        base_model_id: str | None = None,
    ):
        """base_model: a local path / cached hub id, or an already built causal LM module.

        base_model_id: what adapter_config.json and the manifest name as the base (the id the
        services report); default config.base_model_id, else the path, else the module's name.
        """
        self.config = config
        self.agents = _check_agents(agents)
        self.algo = get_algorithm(config.algo)
        self.base_model_id = (
            base_model_id
            or config.base_model_id
            or (str(base_model) if isinstance(base_model, (str, os.PathLike)) else "")
            or getattr(getattr(base_model, "config", None), "name_or_path", "")
            or "unknown"
        )
        self.dist = init_distributed()  # under torchrun: this rank's share of the work (distributed.py)
        torch.set_num_threads(config.num_threads)  # default: every core this process may use
        torch.manual_seed(config.seed)  # LoRA A init and value heads
        self.models = TeamModels(config, base_model, self.agents, self.algo.critic, self.base_model_id)
        self.actor_opts = {
            a: torch.optim.AdamW(actor.params(), lr=config.lr, weight_decay=config.weight_decay)
            for a, actor in self.models.actors.items()
        }
        self.critic_opts = {
            name: torch.optim.AdamW(critic.params(), lr=config.critic_lr, weight_decay=config.weight_decay)
            for name, critic in self.models.critics.items()
        }
        self.dist.broadcast_([p for o in self._opts() for g in o.param_groups for p in g["params"]])
        # the published version whose weights the learner holds (0 = base model); set only by
        # save_adapters (numbered by manifest.next_version), load_adapters and load_checkpoint
        self.version = 0
        self.step = 0  # number of update() calls
        self.dirty = False  # weights changed since `version` was published
        self.rng = torch.Generator().manual_seed(config.seed)  # minibatch shuffling

    def _opts(self) -> list[torch.optim.Optimizer]:
        return [*self.actor_opts.values(), *self.critic_opts.values()]

    # ------------------------------------------------------------------ scoring helpers
    def _logprobs(self, agent: str, samples: Sequence[ActionSample], ref: bool = False):
        actor = self.models.actors[agent]
        fn = actor.ref_logprobs if ref else actor.logprobs
        if self.config.use_sampling_params:
            kw = dict(
                temperature=[s.temperature for s in samples],
                top_k=[s.top_k for s in samples],
                top_p=[s.top_p for s in samples],
            )
        else:
            kw = {}
        return fn([s.prompt_ids for s in samples], [s.response_ids for s in samples], **kw)

    def _micro(self, idx: Sequence[int], size: int | None, key: Callable[[int], object]) -> list[list[int]]:
        """idx cut into forwards of `size` (None: one); sorted by key (a length) first when
        config.length_buckets, so the rows of one forward pad to similar lengths."""
        idx = list(idx)
        if self.config.length_buckets:
            idx.sort(key=key)
        return _chunks(idx, size)

    def _rescore_mask(self, b_stale: torch.Tensor) -> torch.Tensor:
        """(N,) bool: the actions whose learner log pi is recomputed (config.rescore).

        A fresh action was served by the weights the learner holds, and the engine logged
        log-probs of the same processed distribution the trainer scores, so its learner log pi
        IS its behaviour log-prob (tests/train/test_rescore.py); only stale ones need a forward.
        off_policy='none' defines pi_old as the recomputed value: every action is rescored."""
        if self.config.rescore == "always" or self.config.off_policy == "none":
            return torch.ones_like(b_stale)
        return b_stale.clone()

    @torch.no_grad()
    def _score_batch(
        self, batch: Batch, rescore: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        """Learner log pi (N,) of the actions `rescore` marks (0 elsewhere; default all) and, if
        kl_coef, reference token log-probs of every sample."""
        N = len(batch)
        logp = torch.zeros(N)
        ref_tok: list[torch.Tensor | None] = [None] * N
        size = self.config.micro_batch_size or self.config.minibatch_size
        length = lambda i: _sample_len(batch.samples[i])  # noqa: E731
        for agent in self.agents:
            mine = [i for i, s in enumerate(batch.samples) if s.agent == agent]
            idx = self.dist.shard(i for i in mine if rescore is None or bool(rescore[i]))
            for chunk in self._micro(idx, size, length):
                samples = [batch.samples[i] for i in chunk]
                logp[chunk] = self._logprobs(agent, samples).seq_logp.float().cpu()
            if self.config.kl_coef <= 0:
                continue
            for chunk in self._micro(self.dist.shard(mine), size, length):
                ref = self._logprobs(agent, [batch.samples[i] for i in chunk], ref=True)
                for j, i in enumerate(chunk):
                    ref_tok[i] = ref.token_logp[j, : len(batch.samples[i].response_ids)].float().cpu()
        if self.config.kl_coef > 0:
            ref_tok = self.dist.all_reduce_rows(ref_tok, [len(s.response_ids) for s in batch.samples])
        return self.dist.all_reduce_(logp), ref_tok

    def _critic_values(self, critic: Critic, histories: Sequence[list[int]], chunk: int | None,
                       work: dict[str, int] | None = None) -> torch.Tensor:
        """V(h) for histories, each distinct history evaluated once (shortest first when
        config.length_buckets, `chunk` per forward). -> (n,) on the critic device.
        work: adds the tokens of the distinct histories to work['critic_tokens']."""
        uniq: dict[tuple[int, ...], int] = {}
        where = [uniq.setdefault(tuple(h), len(uniq)) for h in histories]
        keys = list(uniq)
        if work is not None:
            work["critic_tokens"] += sum(map(len, keys))
        order = [j for c in self._micro(range(len(keys)), None, lambda j: len(keys[j])) for j in c]
        parts = [critic.values([list(keys[j]) for j in c]) for c in _chunks(order, chunk)]
        flat = torch.cat(parts)  # (n_unique,) in `order`
        pos = torch.empty(len(keys), dtype=torch.long)
        pos[torch.tensor(order, dtype=torch.long)] = torch.arange(len(keys))
        return flat[pos[torch.tensor(where, dtype=torch.long)].to(flat.device)]

    @torch.no_grad()
    def _old_values(self, batch: Batch) -> torch.Tensor:
        values = torch.zeros(len(batch))
        for name, idx in self._by_critic(range(len(batch)), batch).items():
            idx = self.dist.shard(idx, [tuple(self.algo.history(batch.samples[i])) for i in idx])
            if not idx:
                continue
            hist = [self.algo.history(batch.samples[i]) for i in idx]
            chunk = self.config.micro_batch_size or self.config.minibatch_size
            values[idx] = self._critic_values(self.models.critics[name], hist, chunk).float().cpu()
        return self.dist.all_reduce_(values)

    def _by_critic(self, idx: Sequence[int], batch: Batch) -> dict[str, list[int]]:
        out: dict[str, list[int]] = defaultdict(list)
        if self.algo.critic is None:
            return out
        for i in idx:
            out["joint" if self.algo.critic == "joint" else batch.samples[i].agent].append(i)
        return out

    # ------------------------------------------------------------------ the update
    def update(self, episodes: Sequence[EpisodeRecord],
               on_step: Callable[[int, int], None] | None = None) -> dict[str, float]:
        """One training round on a batch of finished episodes; returns namespaced metrics.

        on_step(done, total): called after each optimizer step (minibatch), e.g. a progress bar."""
        cfg = self.config
        batch = build_batch(episodes, self.agents, self.version, cfg.critic_max_len, cfg.max_staleness)
        if len(batch) == 0:
            raise ValueError(
                f"no trainable samples: {batch.n_skipped} of {len(episodes)} episodes are not "
                "finished ok (status != 'ok') or have no turns"
            )
        check_group_sizes(cfg.algo, batch.groups)  # K >= 2 for group baselines, before any forward
        samples = batch.samples
        b_logp_behaviour = batch.tensor("logp_behaviour")  # (N,)
        b_staleness = batch.tensor("staleness")  # (N,)
        # stale: served by weights other than the learner's (another version, or moved since)
        b_stale = (b_staleness != 0) | torch.tensor(self.dirty)  # (N,) bool
        b_rescore = self._rescore_mask(b_stale)  # (N,) bool: a learner forward (config.rescore)
        b_logp_scored, b_ref_tok = self._score_batch(batch, b_rescore)  # (N,), [(T_i,)]
        # a fresh action's learner log pi is its logged one (same weights, same distribution)
        b_logp_learner = torch.where(b_rescore, b_logp_scored, b_logp_behaviour)  # (N,)
        # current learner vs the data, where measured (rescored actions only: honest ESS / gap)
        log_rho_behaviour = (b_logp_learner - b_logp_behaviour)[b_rescore]  # (n_rescored,)
        if cfg.off_policy == "behaviour":
            b_logp_old = b_logp_behaviour
        elif cfg.off_policy == "none":
            b_logp_old = b_logp_learner
        else:  # auto: logged log-probs only where the learner moved since the data was sampled
            b_logp_old = torch.where(b_stale, b_logp_behaviour, b_logp_learner)
        b_use_ratio = b_stale if cfg.ratio_on == "stale" else torch.ones_like(b_stale)  # (N,) bool

        b_values = self._old_values(batch) if self.algo.critic else None  # (N,) V_old(h_t)
        b_adv, b_v_target = self.algo.train_advantages(batch, b_values, cfg)  # (N,), (N,)

        train_idx = torch.tensor([i for i, s in enumerate(samples) if s.trainable], dtype=torch.long)
        if len(train_idx) == 0:
            raise ValueError(
                f"all {len(samples)} samples are more than max_staleness={cfg.max_staleness} versions "
                f"away from the learner's (version {self.version}); sample with the learner's adapter"
            )
        stats: dict[str, list[float]] = defaultdict(list)
        work = {"actor_tokens": 0, "critic_tokens": 0}  # trained with grad, this process
        plan = plan_steps(batch, train_idx.tolist(), cfg, self.rng, by_group=self.algo.critic is None)
        # after the first step the learner has moved: every action is stale against it, and its
        # ratio is taken against b_logp_old, the log-prob before this update (PPO's logp_old)
        b_use_ratio_moved = torch.ones_like(b_use_ratio)
        n_ratio = 0
        for done, mb_idx in enumerate(plan, start=1):
            use_ratio = b_use_ratio if done == 1 else b_use_ratio_moved
            n_ratio += int(use_ratio[mb_idx].sum())
            self._minibatch_step(batch, mb_idx, b_logp_old, b_adv, b_v_target, b_ref_tok, stats,
                                 use_ratio, b_values, work)
            if on_step is not None:
                on_step(done, len(plan))
        self.step += 1
        self.dirty = True

        m = {k: float(sum(v) / len(v)) for k, v in stats.items() if v}
        metrics = {
            "losses/actor": m.get("actor", math.nan),
            "losses/critic": m.get("critic", math.nan),
            "losses/kl": m.get("kl", math.nan),
            "losses/approx_kl": m.get("approx_kl", math.nan),
            "charts/clipfrac": m.get("clipfrac", math.nan),
            "charts/return": sum(batch.episode_returns) / max(len(batch.episode_returns), 1),
            "charts/reward": float(batch.tensor("reward").mean()),
            "charts/adv_mean": float(b_adv.mean()),
            "charts/adv_std": float(b_adv.std(unbiased=False)),
            "charts/staleness": float(b_staleness.mean()),
            "charts/stale_frac": float(b_stale.float().mean()),
            # trained with the ratio loss: stale at the start, or after the update's first step
            "charts/ratio_frac": n_ratio / max(sum(map(len, plan)), 1),
            "charts/steps": float(len(plan)),
            "charts/staleness_max": float(b_staleness.max()),
            "charts/ess": effective_sample_size_log(log_rho_behaviour),
            "charts/logp_gap": float(log_rho_behaviour.abs().mean()) if len(log_rho_behaviour) else math.nan,
            "charts/rescored_frac": float(b_rescore.float().mean()),
            "charts/response_len": float(sum(len(s.response_ids) for s in samples) / len(samples)),
            "charts/samples": float(len(train_idx)),
            # forward + backward work of this process: actor rows (prompt + response) and distinct
            # critic histories; the V_old pass (forward only) is not counted (bench/peer.py)
            "charts/actor_tokens": float(work["actor_tokens"]),
            "charts/critic_tokens": float(work["critic_tokens"]),
            "charts/dropped_stale": float(len(samples) - len(train_idx)),
            "charts/episodes": float(batch.n_episodes),
            "charts/episodes_skipped": float(batch.n_skipped),
            "charts/step": float(self.step),
        }
        if b_values is not None:
            metrics["charts/value"] = float(b_values.mean())
            metrics["charts/explained_variance"] = explained_variance(b_values, b_v_target)
        else:
            metrics["charts/explained_variance"] = math.nan
        return metrics

    def _minibatch_step(self, batch, mb_idx, b_logp_old, b_adv, b_v_target, b_ref_tok, stats,
                        b_use_ratio, b_values, work) -> None:
        """One optimizer step; adds the tokens this process trained (forward + backward) to
        work['actor_tokens'] / work['critic_tokens']."""
        cfg = self.config
        micro = cfg.micro_batch_size
        for opt in self._opts():
            opt.zero_grad(set_to_none=True)

        # actors: forward + backward per agent before switching adapters (one graph per adapter);
        # each agent's loss is its own mean: divided by ITS sample count in the whole minibatch
        # (counted before sharding, so every rank divides by the same number)
        mb_pg, mb_kl, mb_clip, mb_akl = [], [], [], []
        for agent in self.agents:
            n_agent = sum(1 for i in mb_idx if batch.samples[i].agent == agent)
            a_idx = self.dist.shard(i for i in mb_idx if batch.samples[i].agent == agent)
            for chunk in self._micro(a_idx, micro, lambda i: _sample_len(batch.samples[i])):
                work["actor_tokens"] += sum(_sample_len(batch.samples[i]) for i in chunk)
                out = self._logprobs(agent, [batch.samples[i] for i in chunk])
                dev = out.seq_logp.device
                mb_logp = out.seq_logp  # (n,)
                mb_logp_old = b_logp_old[chunk].to(dev)
                mb_adv = b_adv[chunk].to(dev)
                use_ratio = b_use_ratio[chunk].to(dev)  # (n,) bool: stale actions (ratio_on)
                pg, ratio, clipped = policy_loss(mb_logp, mb_logp_old, mb_adv, use_ratio, cfg.clip_eps,
                                                 cfg.truncated_is)
                loss = pg
                if cfg.kl_coef > 0:
                    ref = torch.zeros_like(out.token_logp)
                    for j, i in enumerate(chunk):
                        ref[j, : b_ref_tok[i].numel()] = b_ref_tok[i].to(dev)
                    kl = kl_k3(out.token_logp, ref, out.mask)  # (n,)
                    loss = loss + cfg.kl_coef * kl
                    mb_kl += kl.detach().cpu().tolist()
                (loss.sum() / n_agent).backward()
                log_ratio = torch.log(ratio)
                mb_pg += pg.detach().cpu().tolist()
                mb_clip += clipped.float().cpu().tolist()
                mb_akl += ((ratio - 1) - log_ratio).cpu().tolist()  # k3 approx KL(old||new), CleanRL

        # critics: c_v * mean (y - V)^2 over the critic's samples in the minibatch; a value head on
        # the actor (critic_on_actor) is clipped around V_old as CoMLRL's shared-model IAC
        # (iac.py:938-950), a separate critic never is
        clip_v = cfg.value_clip if cfg.critic_on_actor else None
        mb_vl = []
        for name, c_idx in self._by_critic(mb_idx, batch).items():
            n_critic = len(c_idx)
            c_idx = self.dist.shard(c_idx, [tuple(self.algo.history(batch.samples[i])) for i in c_idx])
            critic = self.models.critics[name]
            # by length, equal histories adjacent (CC: the agents of a turn share h_t), so a
            # forward pads little and evaluates a shared history once
            hist_of = lambda i: self.algo.history(batch.samples[i])  # noqa: E731
            for chunk in self._micro(c_idx, micro, lambda i: (len(hist_of(i)), hist_of(i))):
                hist = [self.algo.history(batch.samples[i]) for i in chunk]
                v = self._critic_values(critic, hist, None, work)  # (n,)
                y = b_v_target[chunk].to(v.device)
                sq = value_loss(v, y, 1.0)  # (y - V)^2
                if clip_v is not None and b_values is not None:
                    sq = clipped_value_loss(v, b_values[chunk].to(v.device), y, clip_v)
                (cfg.value_coef * sq.sum() / n_critic).backward()
                mb_vl += sq.detach().cpu().tolist()

        self.dist.all_reduce_grads_([p for o in self._opts() for g in o.param_groups for p in g["params"]])
        for opt in self._opts():
            params = [p for g in opt.param_groups for p in g["params"] if p.grad is not None]
            if not params:
                continue
            if cfg.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
            opt.step()

        mb_sums = self.dist.sum_counts(
            {"actor": mb_pg, "clipfrac": mb_clip, "approx_kl": mb_akl, "kl": mb_kl, "critic": mb_vl}
        )
        for k, (total, n) in mb_sums.items():
            if n:
                stats[k].append(total / n)

    # ------------------------------------------------------------------ publishing
    @property
    def _save_embeddings(self) -> bool:
        # False unless LoRA wraps embeddings: peft's "auto" looks the base id up on the hub
        return any("embed" in m or "lm_head" in m for m in self.config.lora_target_modules)

    def save_adapters(
        self, out_dir: str | os.PathLike, version: int | None = None, metrics: dict[str, float] | None = None
    ) -> dict[str, Path]:
        """Write out_dir/<agent>/v<version>/ (plain single-adapter peft folder + manifest) per agent.

        version None: the team's next version in out_dir (collm_serve.adapters.manifest.next_version,
        the one numbering; a fresh trainer after v3 publishes v4, never a second v1). Each folder
        is assembled under a temp name and renamed into place, so a reader never sees a
        half-written version; an existing version is never overwritten (versions are immutable).
        """
        if version is None:
            version = next_version(out_dir, self.agents)
        if int(version) < 1:
            raise ValueError(f"adapter version must be >= 1, got {version}")
        clean = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float)) and math.isfinite(v)}
        out: dict[str, Path] = {}
        self.dist.barrier()  # every rank has chosen `version` (collm_serve.adapters.manifest.next_version) before rank 0 creates it
        for agent, actor in self.models.actors.items():
            final = Path(out_dir) / agent / f"v{version}"
            if not self.dist.is_main:
                out[agent] = final
                continue
            if final.exists():
                raise FileExistsError(f"{final} exists; adapter versions are immutable, pick a new version")
            staging = Path(out_dir) / agent / f".v{version}.tmp{os.getpid()}"
            shutil.rmtree(staging, ignore_errors=True)
            # peft writes a non-"default" adapter into staging/<adapter name>/
            actor.host.model.save_pretrained(
                str(staging), selected_adapters=[agent], save_embedding_layers=self._save_embeddings
            )
            src = staging / agent
            write_manifest(
                src,
                name=agent,
                version=int(version),
                base_model=self.base_model_id,
                algorithm=self.config.algo,
                step=self.step,
                metrics=clean,
            )
            os.replace(src, final)
            shutil.rmtree(staging, ignore_errors=True)
            out[agent] = final
        self.dist.barrier()  # the folders exist before any rank goes on (e.g. to push them)
        self.version = int(version)
        self.dirty = False
        return out

    def load_adapters(self, out_dir: str | os.PathLike, version: int) -> None:
        """Start the actors from published versions out_dir/<agent>/v<version>/ (sha256-checked).

        Optimizer and critic state are not in adapter folders: use load_checkpoint to resume those.
        """
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        from collm_serve.adapters.manifest import WEIGHTS_FILE, read_manifest, sha256_file

        for agent, actor in self.models.actors.items():
            folder = Path(out_dir) / agent / f"v{version}"
            manifest = read_manifest(folder)
            if manifest.sha256 != sha256_file(folder / WEIGHTS_FILE):
                raise ValueError(f"{folder}: weights do not match the manifest sha256")
            state = load_file(str(folder / WEIGHTS_FILE), device=str(actor.host.device))
            result = set_peft_model_state_dict(actor.host.model, state, adapter_name=agent)
            missing = [k for k in result.missing_keys if f".{agent}." in k]
            if missing:
                raise ValueError(f"{folder}: adapter lacks {len(missing)} weights, e.g. {missing[0]}")
        self.version, self.dirty = int(version), False

    # ------------------------------------------------------------------ checkpoint / resume
    def state_dict(self) -> dict:
        from peft import get_peft_model_state_dict

        return {
            "format": CHECKPOINT_FORMAT,
            "config": self.config.model_dump(),
            "agents": self.agents,
            "base_model_id": self.base_model_id,
            "version": self.version,
            "step": self.step,
            "dirty": self.dirty,
            "actors": {
                a: get_peft_model_state_dict(
                    actor.host.model, adapter_name=a, save_embedding_layers=self._save_embeddings
                ) for a, actor in self.models.actors.items()
            },
            "critics": {
                name: {
                    "lora": (
                        get_peft_model_state_dict(
                            c.host.model, adapter_name=c.adapter, save_embedding_layers=self._save_embeddings
                        )
                        if c.owns_adapter
                        else None
                    ),
                    "head": c.head.state_dict(),
                }
                for name, c in self.models.critics.items()
            },
            "actor_opts": {a: o.state_dict() for a, o in self.actor_opts.items()},
            "critic_opts": {n: o.state_dict() for n, o in self.critic_opts.items()},
            "rng": self.rng.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        from peft import set_peft_model_state_dict

        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} checkpoint (format={state.get('format')!r})")
        if state["agents"] != self.agents or state["config"]["algo"] != self.config.algo:
            raise ValueError(
                f"checkpoint is for agents {state['agents']} / algo {state['config']['algo']!r}, "
                f"this trainer has {self.agents} / {self.config.algo!r}; build a matching Trainer"
            )
        for a, actor in self.models.actors.items():
            set_peft_model_state_dict(actor.host.model, state["actors"][a], adapter_name=a)
        for name, c in self.models.critics.items():
            if c.owns_adapter:
                set_peft_model_state_dict(c.host.model, state["critics"][name]["lora"], adapter_name=c.adapter)
            c.head.load_state_dict(state["critics"][name]["head"])
        for a, o in self.actor_opts.items():
            o.load_state_dict(state["actor_opts"][a])
        for n, o in self.critic_opts.items():
            o.load_state_dict(state["critic_opts"][n])
        self.version, self.step, self.dirty = state["version"], state["step"], state["dirty"]
        self.rng.set_state(state["rng"])

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Adapters, critics, optimizers, counters and RNG in one file (atomic rename); rank 0 only."""
        if not self.dist.is_main:
            return
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))

    # ------------------------------------------------------------------ convenience
    def sample(self, agent: str, prompts, max_new_tokens: int, **kw):
        """Sample from agent's current actor (see collm_train.sampling.sample_responses)."""
        from collm_train.sampling import sample_responses

        model = self.models.actors[agent].host.activate(agent)
        return sample_responses(model, prompts, max_new_tokens, **kw)
