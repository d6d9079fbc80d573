"""Actors and critics as LoRA adapters on frozen bases (peft), plus value heads.

Memory layout: an `AdapterHost` is ONE frozen base model on one device carrying several named
LoRA adapters; agents placed on the same device share it (multi-adapter, switched with
`set_adapter`), and critic adapters join the actors' host when `critic_share_base` and the
devices match. The reference policy for the KL term is the same host with adapters disabled.

Critic = LoRA backbone + value head (Linear -> Tanh -> Linear, or CoMLRL's single Linear) on the
final-norm hidden state of the LAST input token; critic inputs are histories (prompts only, left-padded so the last token
is the last column). CC: one critic "critic__joint" on the joint history h_t. DC: one critic
"critic__<agent>" per agent on h_{i,t}, or (critic_on_actor) a value head on the actor's own
adapter, so the value loss also shapes the actor's LoRA.

Models stay in eval mode: LoRA dropout is 0 by default and Llama-style bases have no dropout,
so teacher-forced log-probs are deterministic and the ratio on fresh data is exactly 1.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence

import torch
from torch import nn

from collm_train.config import TrainConfig
from collm_train.logprob import SeqLogprobs, sequence_logprobs

CRITIC_PREFIX = "critic__"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def lora_config(config: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )


class ValueHead(nn.Module):
    """V(h) = W2 tanh(W1 x + b1) + b2 on the last token's hidden state x (H,).

    head_hidden None: width H; 0: a single Linear W x + b, CoMLRL's default (its ValueHead with
    hidden_dim None, models/actor_critic.py:22-49, weights N(0, 0.02), bias 0).
    """

    def __init__(self, hidden_size: int, head_hidden: int | None = None):
        super().__init__()
        if head_hidden == 0:
            self.net = nn.Sequential(nn.Linear(hidden_size, 1))
            nn.init.normal_(self.net[0].weight, std=0.02)
            nn.init.zeros_(self.net[0].bias)
            return
        head_hidden = head_hidden or hidden_size
        self.net = nn.Sequential(nn.Linear(hidden_size, head_hidden), nn.Tanh(), nn.Linear(head_hidden, 1))
        # small output layer: initial values near 0, yet every head weight gets a gradient at step 1
        nn.init.normal_(self.net[2].weight, std=0.01)
        nn.init.zeros_(self.net[2].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, H) -> (B,)
        return self.net(x.float()).squeeze(-1)


class AdapterHost:
    """One frozen base on one device carrying named LoRA adapters."""

    def __init__(self, base: nn.Module, device: str, base_model_id: str):
        self.base = base.to(device)
        self.device = torch.device(device)
        self.base_model_id = base_model_id
        self.model = None  # PeftModel once the first adapter is added

    def add_adapter(self, name: str, lora_cfg) -> None:
        from peft import get_peft_model

        if self.model is None:
            self.model = get_peft_model(self.base, lora_cfg, adapter_name=name)
        else:
            self.model.add_adapter(name, lora_cfg)
        # get_peft_model takes the id from the module (a temp path, or "" in memory); the saved
        # adapter_config.json must name the base the services run
        self.model.peft_config[name].base_model_name_or_path = self.base_model_id
        self.model.eval()

    def activate(self, name: str):
        """Make `name` the active adapter (also makes it the one with requires_grad)."""
        if self.model.active_adapter != name:
            self.model.set_adapter(name)
        return self.model

    def params(self, name: str) -> list[nn.Parameter]:
        """The LoRA parameters of adapter `name` (trainable or not at the moment)."""
        return [p for n, p in self.model.named_parameters() if f".{name}." in n]

    def frozen_params(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if "lora_" not in n}

    @property
    def hidden_size(self) -> int:
        return self.base.config.hidden_size


class Actor:
    """Agent i's policy: its adapter on a host."""

    def __init__(self, host: AdapterHost, name: str):
        self.host, self.name = host, name

    def logprobs(self, prompts, responses, temperature=1.0, top_k=0, top_p=1.0) -> SeqLogprobs:
        model = self.host.activate(self.name)
        return sequence_logprobs(model, prompts, responses, temperature, top_k, top_p)

    def ref_logprobs(self, prompts, responses, temperature=1.0, top_k=0, top_p=1.0) -> SeqLogprobs:
        """Reference policy = the base model with every adapter disabled."""
        model = self.host.model
        with torch.no_grad(), model.disable_adapter():
            return sequence_logprobs(model, prompts, responses, temperature, top_k, top_p)

    def params(self) -> list[nn.Parameter]:
        return self.host.params(self.name)


class Critic:
    """V_phi(h): LoRA adapter `adapter` on a host + a value head on the last token."""

    def __init__(self, host: AdapterHost, adapter: str, head: ValueHead, max_len: int, owns_adapter: bool):
        self.host, self.adapter, self.head, self.max_len = host, adapter, head.to(host.device), max_len
        self.owns_adapter = owns_adapter  # False: the adapter is an actor's (critic_on_actor)

    def values(self, histories: Sequence[Sequence[int]]) -> torch.Tensor:
        """V(h) for a batch of token-id histories of at most max_len tokens. -> (B,).

        Histories come cut to max_len from data.build_batch (cut in the middle, data.cut_middle);
        a longer one is an error rather than a silent cut that could drop the task statement.
        """
        model = self.host.activate(self.adapter)
        hs = [list(h) for h in histories]
        if any(len(h) == 0 for h in hs):
            raise ValueError("a critic history is empty; every prompt needs at least one token")
        if any(len(h) > self.max_len for h in hs):
            raise ValueError(
                f"a critic history has {max(map(len, hs))} tokens, over critic_max_len={self.max_len}; "
                "cut it with collm_train.data.cut_middle (build_batch does)"
            )
        L = max(len(h) for h in hs)
        input_ids = torch.zeros(len(hs), L, dtype=torch.long)
        h_len = torch.tensor([len(h) for h in hs])
        for i, h in enumerate(hs):
            input_ids[i, L - len(h) :] = torch.tensor(h)
        start = (L - h_len)[:, None]  # (B, 1)
        col = torch.arange(L)
        attention_mask = (col >= start).long()  # (B, L)
        position_ids = (col - start).clamp(min=0)  # (B, L)
        d = self.host.device
        decoder = model.get_base_model().get_decoder()
        out = decoder(
            input_ids=input_ids.to(d),
            attention_mask=attention_mask.to(d),
            position_ids=position_ids.to(d),
            use_cache=False,
        )
        return self.head(out.last_hidden_state[:, -1, :])  # (B,)

    def params(self) -> list[nn.Parameter]:
        """Parameters the critic optimizer owns (the actor's adapter stays with the actor's)."""
        lora = self.host.params(self.adapter) if self.owns_adapter else []
        return lora + list(self.head.parameters())


def _load_base(base, dtype: torch.dtype, first: bool):
    """A fresh frozen base: from a path / hub id (HF_HUB_OFFLINE=1 forbids downloads) or a copy of a module."""
    if isinstance(base, (str, os.PathLike)):
        from transformers import AutoModelForCausalLM

        return AutoModelForCausalLM.from_pretrained(base, dtype=dtype)
    model = base if first else copy.deepcopy(base)
    return model.to(dtype)


class TeamModels:
    """All actors and critics of a team: one AdapterHost per (device, role) in use."""

    def __init__(
        self, config: TrainConfig, base_model, agents: Sequence[str], critic_kind: str | None, base_model_id: str
    ):
        self.config = config
        self.base_model_id = base_model_id
        self._dtype = _DTYPES[config.dtype]
        self.hosts: dict[tuple[str, str], AdapterHost] = {}
        role = "actor" if config.critic_share_base else "critic"
        critic_names = [] if critic_kind is None else ["joint"] if critic_kind == "joint" else list(agents)
        needed = [(config.device_of(a), "actor") for a in agents]
        if critic_names and not config.critic_on_actor:
            needed.append((config.critic_device, role))
        # every base is created before any adapter is injected: peft injects in place, so a copy
        # of an already-wrapped module would carry the first host's LoRA layers
        for key in dict.fromkeys(needed):
            base = _load_base(base_model, self._dtype, first=not self.hosts)
            for p in base.parameters():
                p.requires_grad_(False)
            self.hosts[key] = AdapterHost(base, key[0], base_model_id)

        lcfg = lora_config(config)
        self.actors: dict[str, Actor] = {}
        for agent in agents:
            host = self.hosts[(config.device_of(agent), "actor")]
            host.add_adapter(agent, copy.deepcopy(lcfg))
            self.actors[agent] = Actor(host, agent)
        self.critics: dict[str, Critic] = {}  # "joint" (CC) or agent name (DC)
        for name in critic_names:
            if config.critic_on_actor:
                host, adapter, owns = self.actors[name].host, name, False
            else:
                host, adapter, owns = self.hosts[(config.critic_device, role)], CRITIC_PREFIX + name, True
                host.add_adapter(adapter, copy.deepcopy(lcfg))
            head = ValueHead(host.hidden_size, config.value_head_hidden)
            self.critics[name] = Critic(host, adapter, head, config.critic_max_len, owns)

    def critic_for(self, agent: str) -> Critic:
        return self.critics["joint"] if "joint" in self.critics else self.critics[agent]

    def frozen_params(self) -> dict[str, nn.Parameter]:
        out = {}
        for (device, role), host in self.hosts.items():
            out.update({f"{device}/{role}/{n}": p for n, p in host.frozen_params().items()})
        return out
