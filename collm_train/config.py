"""TrainConfig: every knob of one CoLLM update, one docstring per field, validated once.

The docstrings double as the field descriptions (pydantic `use_attribute_docstrings`), so a CLI
can print them without a second copy that drifts. The algorithm names, their traits and the
`algo` help come from `collm_train.algorithms.spec` (torch-free), the registry's one definition. The config is frozen: derived values are
computed in properties here, never by mutating the config at run time.

Presets (`preset`): a preset fills every field it names that the caller did not set.
  paper  (default) the update rules of the paper's code, CoMLRL 1.3.6 (docs/paper-fidelity.md):
         on-policy -A*log pi (trainers/actor_critic/maac.py:875, iac.py:932,
         reinforce/magrpo.py:1481), advantages standardised per (agent, turn) over the buffer
         for CC/DC (actor_critic/ac_base.py:94-103 with the per-turn split at ac_base.py:205-218)
         and within each Monte Carlo group (magrpo.py:1417-1420), no gradient clipping
         (maac.py:887-893), value clipping 0.2 only for a value head on the actor
         (iac.py:34, 938-950). Our one addition: stale actions (served by an older adapter than
         the learner holds, and every action of an update's steps after the first, which the
         learner has moved away from) get a truncated importance weight min(rho, 1).
  collm  the extensions this project used before issue 12: PPO clipping (eps 0.2) on every
         action, no advantage standardisation, gradient-norm clip 1.0, no value clipping.
  paper + task  (`task` housebuild, strbuild, coding or writing) also what the paper RAN on that
         task, per algorithm (collm_train/paper.py, each value with its config file:line; the
         table in docs/paper-fidelity.md): the temperature-1 log-prob rule (use_sampling_params
         False, pi_old recomputed under the same rule: off_policy none), pool size
         (rollout_buffer_size) and step size (minibatch_size), lr and critic_lr, gamma, K
         (num_generations), sampling (temperature, top_p, top_k, max_new_tokens), reward_shift,
         early_stop_threshold. Print it: `collm-train config --algo cc --preset paper --task housebuild`.
Explicitly given fields always win; `clip_eps` and `truncated_is` are alternatives, so giving
one of them turns the preset's other one off.
"""

from __future__ import annotations

import os
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from collm_train.algorithms.spec import AlgoName, algo_help, spec
from collm_train.paper import paper_values

PRESETS: dict[str, dict[str, Any]] = {
    "paper": dict(clip_eps=None, truncated_is=1.0, ratio_on="stale", normalize_adv="auto",
                  max_grad_norm=None, value_clip=0.2),
    "collm": dict(clip_eps=0.2, truncated_is=None, ratio_on="all", normalize_adv="off",
                  max_grad_norm=1.0, value_clip=None),
}
_ALTERNATIVES = ("clip_eps", "truncated_is")


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity; os.cpu_count where that is unknown)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class TrainConfig(BaseModel):
    """Hyper-parameters of CoLLM-CC / CoLLM-DC / the Monte Carlo baselines (LoRA actors)."""

    model_config = ConfigDict(use_attribute_docstrings=True, frozen=True, extra="forbid")

    preset: Literal["paper", "collm"] = "paper"
    """Defaults for the update rules: `paper` (CoMLRL 1.3.6's rules) or `collm` (PPO-style
    extensions); see the module docstring. Fields given explicitly override the preset."""

    algo: AlgoName = Field("cc", description=algo_help())  # names and help: algorithms/spec.py

    gamma: float = Field(0.9, ge=0.0, le=1.0)
    """Discount between turns (paper: 0.9)."""

    gae_lambda: float | None = Field(None, ge=0.0, le=1.0)
    """None: TD(0) advantages (the paper). A value in [0, 1]: GAE(lambda) over the turn tree, where
    a node's advantage is delta + gamma*lambda*mean(children advantages). Critic algorithms only."""

    normalize_adv: Literal["auto", "agent_turn", "group", "off"] = "auto"
    """Advantage standardisation (A - mean) / max(std, adv_eps) within: `agent_turn` each (agent,
    turn_index) over the batch (CoMLRL's CC/DC, ac_base.py:94-103), `group` each Monte Carlo
    sibling group of K (CoMLRL's MC, magrpo.py:1417-1420), `auto` the paper's choice for the
    algorithm (agent_turn for cc/dc, group for the Monte Carlo baselines), `off` none. A group of
    one sample passes through unchanged (CoMLRL: `numel() > 1`). true/false mean auto/off, so a
    Monte Carlo baseline standardises within its group under every spelling (magrpo.py:1416-1420;
    agent_turn is refused for it). With rollout_buffer_size, agent_turn standardises within each
    pool's (agent, turn) samples, as CoMLRL's buffer (ac_base.py:94-103, 205-218)."""

    clip_eps: float | None = Field(None, gt=0.0)
    """PPO clip range on the macro-action ratio rho = exp(log pi_theta - log pi_old) (preset
    collm: 0.2). None: no clipping (see truncated_is)."""

    truncated_is: float | None = Field(1.0, gt=0.0)
    """Truncated importance weight instead of PPO clipping: loss = -min(rho, c).detach() * A * log pi
    on the actions `ratio_on` selects (preset paper: c = 1). None with clip_eps None: plain
    -A * log pi on every action. The two are alternatives."""

    ratio_on: Literal["stale", "all"] = "stale"
    """Which actions the ratio (clip or truncated weight) applies to. `stale`: only actions served
    by an adapter version other than the weights the learner holds (an older version, or the
    learner updated since it published); fresh actions get the paper's on-policy -A * log pi.
    `all`: every action (PPO-style)."""

    off_policy: Literal["auto", "behaviour", "none"] = "auto"
    """Which log-probs define pi_old in rho: `behaviour` the logged serving log-probs, `none` the
    learner's own log-probs recomputed at the start of the update (rho starts at exactly 1),
    `auto` behaviour for stale samples (older adapter version, or learner changed since it
    published that version) and the learner's own for fresh ones, which equals the logged one:
    `rescore` says whether it is read from the log (auto) or recomputed (always)."""

    max_staleness: int | None = Field(None, ge=0)
    """Drop actions whose adapter version is more than this many versions away from the weights the
    learner holds (collm_train.data.staleness: behind it, or ahead of a learner that never held
    that version, e.g. a fresh trainer on traces of v3)."""

    value_coef: float = Field(0.6, ge=0.0)
    """c_v, weight of the critic loss c_v * (y - V)^2 (paper: 0.6, maac.py:34, iac.py:35)."""

    value_clip: float | None = Field(0.2, gt=0.0)
    """DC with critic_on_actor only (CoMLRL's shared-model IAC, iac.py:938-950): the value loss is
    max((y - V)^2, (y - V_clip)^2), V_clip = V_old + clip(V - V_old, +-value_clip). A separate
    critic is never clipped, as in the paper. None disables it."""

    kl_coef: float = Field(0.0, ge=0.0)
    """Weight of the KL to the reference policy (the base model, adapters disabled); k3 estimator
    summed over response tokens. 0 disables it and skips the reference forward."""

    lr: float = Field(1e-4, gt=0.0)
    """Actor (LoRA) learning rate. Task-independent default 1e-4 (LoRA needs a larger step than the
    paper's full fine-tuning); preset paper with `task` sets the paper's per-algorithm lr."""

    critic_lr: float = Field(1e-4, gt=0.0)
    """Critic learning rate (critic LoRA + value head)."""

    weight_decay: float = Field(0.0, ge=0.0)
    """AdamW weight decay for actors and critics."""

    epochs: int = Field(1, ge=1)
    """Passes over the batch per `update` call. Every optimizer step after the first of an update
    trains on actions the learner has moved away from: they are treated as stale (ratio against
    pi_old, the log-prob before the update, like PPO's logp_old; truncated_is / clip_eps)."""

    minibatch_size: int = Field(8, ge=1)
    """(agent, turn) samples per optimizer step. With rollout_buffer_size set: CoMLRL's
    train_batch_size, units of ONE agent and ONE turn per step (units: samples for cc/dc, sibling
    groups of K (CoMLRL's nodes) for the Monte Carlo baselines)."""

    rollout_buffer_size: int | None = Field(None, ge=1)
    """CoMLRL's pool: None = our schedule (the update's batch, shuffled minibatches across agents
    and turns, standardisation over the whole batch per (agent, turn)). A number: the paper's
    schedule (ac_base.py:196-240, magrpo.py:1316-1377): each agent's units, in the order they were
    played, are cut into pools of this many; each pool is split per turn, its advantages
    standardised there (cc/dc), shuffled and stepped in minibatch_size units, the pools in the
    order they fill. 1 with minibatch_size 1: one actor step (and one critic step) per sample."""

    micro_batch_size: int | None = Field(None, ge=1)
    """Samples per forward pass (gradient accumulation inside a minibatch); None = whole minibatch."""

    length_buckets: bool = True
    """Sort each agent's (and critic's) samples by token length before cutting them into
    micro-batches, so each forward pads to similar lengths (little padding compute). Loss weights
    do not change: every sample's loss is still divided by its agent's (critic's) count in the
    whole minibatch, so the gradient is the same sum in another order. Also orders the no-grad
    scoring chunks. False: micro-batches in minibatch (shuffled) order."""

    rescore: Literal["auto", "always"] = "auto"
    """Whether the update re-runs the learner without grad to get log pi of every logged action
    before training. `auto`: only for STALE actions (another adapter version, or the learner moved
    since publishing): for a fresh action the learner holds the very weights that served it, and
    the engine logged log-probs of the same processed distribution the trainer scores
    (`logprobs_mode="processed_logprobs"`, tests/train/test_rescore.py), so its logged behaviour
    log-prob is used instead of a forward. `always`: a forward for every action (pi_old of fresh
    actions then comes from the learner, immune to engine numerics). off_policy='none' always
    rescores (it defines pi_old as the recomputed log-prob). charts/ess and charts/logp_gap are
    computed over the rescored actions only (nan when none were); charts/rescored_frac says
    how many. CoMLRL recomputes old log-probs with a forward per sample (maac.py:521-528)."""

    threads: int | None = Field(None, ge=1)
    """torch intra-op threads for the trainer process, set when the Trainer starts; None = every
    core this process may run on (os.sched_getaffinity), divided among the torchrun processes of
    this machine (LOCAL_WORLD_SIZE). On a machine shared with other busy processes, fewer can be
    faster (OpenMP threads spin-wait for cores others hold)."""

    cpu_affinity: tuple[int, ...] | None = Field(None, min_length=1)
    """CPU cores the trainer process runs on, e.g. `2,3` (None: every core it may use). Applied
    with os.sched_setaffinity before the Trainer starts torch's threads, so `threads` None then
    means one thread per listed core. The agents' own `cpu_affinity` (collm_serve AgentConfig)
    is its counterpart: on one machine give agents and trainer disjoint cores, so the async
    online loop's collection and updates do not spin-wait on each other's OpenMP threads."""

    max_grad_norm: float | None = Field(None, gt=0.0)
    """Gradient-norm clip, per actor and per critic (preset collm: 1.0); None disables it (the
    paper's code clips nothing, maac.py:887-893)."""

    lora_r: int = Field(8, ge=1)
    """LoRA rank of actors and critics."""

    lora_alpha: int = Field(16, ge=1)
    """LoRA alpha (scaling alpha / r)."""

    lora_dropout: float = Field(0.0, ge=0.0, lt=1.0)
    """LoRA dropout. Keep 0 for exact on-policy ratios (the trainer runs models in eval mode)."""

    lora_target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    """Module names LoRA wraps (must also be servable by the engine, e.g. vLLM's supported set)."""

    critic_max_len: int = Field(2048, ge=8)
    """Max tokens of a critic input (history). Longer histories are cut in the MIDDLE: each agent's
    task statement (its turn-0 prompt) and newest turn stay, the oldest turns in between go
    (collm_train.data.cut_middle)."""

    value_head_hidden: int | None = Field(None, ge=0)
    """Hidden width of the value head Linear -> Tanh -> Linear; None = the base's hidden size;
    0 = a single Linear (CoMLRL's default head, models/actor_critic.py:27-37)."""

    critic_on_actor: bool = False
    """DC only: put agent i's value head on its actor adapter instead of a separate critic LoRA."""

    critic_share_base: bool = True
    """Critic LoRA adapters live on the actors' frozen base (one copy in memory) when the critic
    device equals the actor device; False loads a separate base for the critics."""

    actor_device: str | dict[str, str] = "cpu"
    """Device of the actors: one for all, or per agent name (agents on one device share a base)."""

    critic_device: str = "cpu"
    """Device of the critic(s)."""

    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype of the frozen base weights (LoRA weights stay float32)."""

    base_model_id: str | None = None
    """Base model id written into adapter_config.json and the manifest (what services report);
    None = the path / name the base was loaded from."""

    use_sampling_params: bool = True
    """True: log pi is the log-prob under the distribution actually sampled from (each action's
    logged temperature, top_k, top_p), so it matches the logged behaviour log-probs and on-policy
    ratios are exactly 1. Its cost: a token whose nucleus holds one token has log-prob exactly 0
    and carries NO gradient: 69% (writing) and 72% (coding) of tokens sampled at 0.7 / 0.9, 87%
    (strbuild) and 95% (housebuild) at 0.6 / 0.6, SmolLM2-135M (issue 28, measured 2026-12-07).
    False: the paper's rule, the temperature-1 log-softmax of the raw logits summed over the
    response (maac.py:818-830, iac.py:853-867, magrpo.py:1464-1479): every token has gradient
    (preset paper with `task`). The logged behaviour log-probs are then not comparable, so it
    requires off_policy='none': pi_old is recomputed under the same rule before the update."""

    task: str | None = None
    """The task trained on. With preset paper and a task the paper ran (housebuild, strbuild,
    coding, writing) the preset also fills what the paper ran on it (collm_train/paper.py);
    another name fills nothing more. The training commands refuse a task other than the team's."""

    num_generations: int | None = Field(None, ge=1)
    """K, joint actions sampled per node (the team's group_size; the collector's setting, the
    trainer reads K from the traces). Set by preset paper with `task`: 1 for cc/dc, the
    paper's MAGRPO K otherwise. None: whatever the team uses."""

    temperature: float | None = Field(None, gt=0.0)
    """Sampling temperature the paper used on `task` (the collector's setting, not read by the
    update: each action's logged temperature is). None: the team's."""

    top_p: float | None = Field(None, gt=0.0, le=1.0)
    """Nucleus top-p the paper used on `task` (the collector's setting). None: the team's."""

    top_k: int | None = Field(None, ge=0)
    """Top-k the paper used on `task`, 0 = none (the collector's setting). None: the team's."""

    max_new_tokens: int | None = Field(None, ge=1)
    """Response token limit the paper used on `task` (the collector's setting). None: the team's."""

    reward_shift: float | None = None
    """Constant added to every reward (CoMLRL reward_processor shift, applied by the task when it
    scores; traces hold shifted rewards). Recorded for `task`; None: the task's own."""

    early_stop_threshold: float | None = None
    """Episode ends early when the turn's (mean) reward passes it (applied by the task / runner).
    Recorded for `task`; None: the task's own (or none)."""

    seed: int = 0
    """Seed for LoRA / value-head init and minibatch shuffling."""

    adv_eps: float = Field(1e-6, gt=0.0)
    """Lower bound on the std in advantage standardisation (CoMLRL: std.clamp(min=1e-6))."""

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        preset = data.get("preset", "paper")
        if preset not in PRESETS:
            return data  # the Literal check names the choices
        given = set(data)
        fill = dict(PRESETS[preset])
        if preset == "paper":  # what the paper ran on `task` (collm_train/paper.py), if it ran it
            fill.update({k: v for k, (v, _src) in paper_values(data.get("task"), data.get("algo", "cc")).items()})
        for key, value in fill.items():
            if key in given:
                continue
            if key in _ALTERNATIVES and given & set(_ALTERNATIVES):
                data[key] = None  # the caller chose the other alternative
                continue
            data[key] = value
        return data

    @field_validator("normalize_adv", mode="before")
    @classmethod
    def _bool_normalize(cls, v: Any) -> Any:
        return {True: "auto", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("lora_target_modules")
    @classmethod
    def _non_empty_targets(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if not v:
            raise ValueError("lora_target_modules must name at least one module, e.g. q_proj,v_proj")
        return v

    @field_validator("cpu_affinity")
    @classmethod
    def _cores(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (min(v) < 0 or len(set(v)) != len(v)):
            raise ValueError(f"cpu_affinity {list(v)}: list distinct core numbers >= 0, e.g. 2,3")
        return v

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if self.truncated_is is not None and self.clip_eps is not None:
            raise ValueError(
                f"truncated_is={self.truncated_is} and clip_eps={self.clip_eps} are alternatives; "
                "set clip_eps=None to use truncated importance sampling, or truncated_is=None for PPO clipping"
            )
        if self.gae_lambda is not None and not self.has_critic:
            raise ValueError(
                f"gae_lambda needs a critic but algo={self.algo!r} is Monte Carlo; "
                "use algo='cc' or 'dc', or gae_lambda=None"
            )
        if self.critic_on_actor and self.algo != "dc":
            raise ValueError(
                f"critic_on_actor applies to algo='dc' (one value head per agent), not {self.algo!r}"
            )
        if not self.use_sampling_params and self.off_policy != "none":
            raise ValueError(
                "use_sampling_params=False makes learner log-probs incomparable with the logged "
                "behaviour log-probs; set off_policy='none'"
            )
        if not self.has_critic and self.normalize_adv == "agent_turn":
            raise ValueError(
                f"algo={self.algo!r} standardises within each sibling group of K (the paper's rule, "
                "magrpo.py:1416-1420); use normalize_adv='auto' (or 'group', true), or 'off'"
            )
        if self.micro_batch_size is not None and self.micro_batch_size > self.minibatch_size:
            raise ValueError(
                f"micro_batch_size={self.micro_batch_size} exceeds minibatch_size="
                f"{self.minibatch_size}; lower it or leave it None"
            )
        return self

    # --- derived values, computed in one place -------------------------------------------
    @property
    def num_threads(self) -> int:
        """threads, or (None) this process's share of the cores it may run on."""
        if self.threads is not None:
            return self.threads
        local = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        return max(1, available_cores() // max(local, 1))

    @property
    def has_critic(self) -> bool:
        return spec(self.algo).critic is not None

    @property
    def adv_norm(self) -> str:
        """normalize_adv with `auto` resolved: agent_turn (cc/dc), group (Monte Carlo), or off."""
        if self.normalize_adv != "auto":
            return self.normalize_adv
        return "agent_turn" if self.has_critic else "group"

    def device_of(self, agent: str) -> str:
        if isinstance(self.actor_device, str):
            return self.actor_device
        try:
            return self.actor_device[agent]
        except KeyError:
            raise ValueError(
                f"actor_device has no entry for agent {agent!r}; give one per agent or a single string"
            ) from None
