"""Data-parallel training over torchrun processes: gloo on CPU, nccl on GPU.

    torchrun --nproc-per-node 2 -m collm_train --algo cc --traces runs/traces.db --team team.yaml

Each rank computes part of the single-process update, and together they produce the same result:
  * every rank reads the same episodes and builds the same `Batch` (token ids only, cheap), so
    returns, advantages and their (agent, turn) normalisation are computed on the full batch
    on every rank, with no statistics to all-reduce;
  * the model work is split. No-grad scoring (learner and reference log-probs, V_old(h)): each
    row is computed by exactly one rank, zeros elsewhere, and the rows are summed over ranks.
    Gradient steps: every rank draws the same minibatch permutation (same seed), takes its share
    of each minibatch and back-propagates sum(loss of its samples) / |minibatch|. The gradients
    are then SUMMED over ranks (not averaged: every share is already divided by the full
    minibatch size) before clipping and the optimizer step, so every rank takes the step that
    one process would take.
Only the float summation order changes: adapters agree with a 1-process run to ~1e-6.

Why not `DistributedDataParallel`: DDP wraps one module with a fixed set of parameters and reduces
them in backward hooks. Here one frozen base carries several LoRA adapters that peft switches
with `set_adapter`, and an agent can have no samples in a rank's share of a minibatch (its
gradient is None there but not on another rank). One explicit all-reduce per optimizer step
handles both. FSDP (sharding the frozen base across GPUs) is the option for bases that do not fit
one GPU; it is not implemented here.
"""

from __future__ import annotations

import atexit
import os
from collections import defaultdict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DataParallel:
    """This process's place among the training processes; every collective is a no-op for one."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self) -> None:
        if self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={self.rank}, world_size={self.world_size}")

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes adapters, checkpoints and logs."""
        return self.rank == 0

    def shard(self, idx: Iterable[int], keys: Sequence[Hashable] | None = None) -> list[int]:
        """This rank's share of idx: round robin, or by key so equal keys stay on one rank.

        keys (one per index): e.g. critic histories, so each distinct history is evaluated once
        across all ranks (CC's agents share the joint history of a turn).
        """
        idx = list(idx)
        if self.world_size == 1:
            return idx
        if keys is None:
            return idx[self.rank :: self.world_size]
        owner: dict[Hashable, int] = {}
        return [i for i, k in zip(idx, keys, strict=True)
                if owner.setdefault(k, len(owner) % self.world_size) == self.rank]

    def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
        """Sum t over ranks, in place."""
        if self.world_size > 1:
            torch.distributed.all_reduce(t)
        return t

    def all_reduce_rows(self, rows: Sequence[torch.Tensor | None], lengths: Sequence[int]) -> list[torch.Tensor | None]:
        """Ragged rows, each computed on one rank (None elsewhere) -> every row on every rank.

        rows[i] is (lengths[i],) where this rank computed it; returns None where no rank did.
        """
        if self.world_size == 1:
            return list(rows)
        n, width = len(rows), max(lengths, default=0)
        b_rows = torch.zeros(n, width + 1)  # (N, T_max + 1); last column: 1 where a rank filled the row
        for i, r in enumerate(rows):
            if r is not None:
                b_rows[i, : r.numel()] = r.float().cpu()
                b_rows[i, -1] = 1.0
        self.all_reduce_(b_rows)
        return [b_rows[i, : lengths[i]].clone() if b_rows[i, -1] > 0 else None for i in range(n)]

    def sum_counts(self, values: dict[str, list[float]]) -> dict[str, tuple[float, int]]:
        """{name: per-sample values on this rank} -> {name: (sum, count) over all ranks}."""
        if self.world_size == 1:
            return {k: (float(sum(v)), len(v)) for k, v in values.items()}
        b = torch.tensor([[float(sum(v)), float(len(v))] for v in values.values()], dtype=torch.float64)
        self.all_reduce_(b)
        return {k: (float(s), int(c)) for k, (s, c) in zip(values, b.tolist(), strict=True)}

    def all_reduce_grads_(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Sum .grad over ranks; a parameter with no gradient on any rank keeps grad None.

        (AdamW steps every parameter whose grad is not None, even a zero one: its momentum moves
        it. So "no rank had samples for this agent" must stay None, as in one process.) One flat
        buffer per device, so one collective per optimizer step. params: same order on all ranks.
        """
        if self.world_size == 1:
            return
        by_device: dict[torch.device, list[torch.nn.Parameter]] = defaultdict(list)
        for p in params:
            by_device[p.device].append(p)
        for device, ps in by_device.items():
            sizes = [p.numel() for p in ps]
            flat = torch.zeros(sum(sizes) + len(ps), device=device)  # grads, then one has-grad flag per param
            flags = flat[sum(sizes) :]
            for j, (p, g) in enumerate(zip(ps, flat[: sum(sizes)].split(sizes), strict=True)):
                if p.grad is not None:
                    g.copy_(p.grad.reshape(-1))
                    flags[j] = 1.0
            self.all_reduce_(flat)
            has_grad = flags.tolist()
            for j, (p, g) in enumerate(zip(ps, flat[: sum(sizes)].split(sizes), strict=True)):
                if has_grad[j] == 0:
                    p.grad = None
                elif p.grad is None:
                    p.grad = g.view_as(p).to(p.dtype, copy=True)
                else:
                    p.grad.copy_(g.view_as(p))

    def broadcast_(self, params: Sequence[torch.nn.Parameter]) -> None:
        """Overwrite params with rank 0's values (what DDP does at construction)."""
        if self.world_size == 1:
            return
        by_device: dict[torch.device, list[torch.nn.Parameter]] = defaultdict(list)
        for p in params:
            by_device[p.device].append(p)
        with torch.no_grad():
            for ps in by_device.values():
                flat = torch.cat([p.detach().reshape(-1).float() for p in ps])
                torch.distributed.broadcast(flat, src=0)
                for p, v in zip(ps, flat.split([p.numel() for p in ps]), strict=True):
                    p.copy_(v.view_as(p))

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def init_distributed(backend: str | None = None) -> DataParallel:
    """Join the torchrun process group (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_* env), once.

    No-op without torchrun (or with one process). backend: default gloo on CPU, and on a GPU
    machine gloo for CPU tensors + nccl for CUDA tensors; each rank then uses cuda:LOCAL_RANK as
    its current device, so set actor/critic devices to plain `cuda` (not `cuda:0`).
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DataParallel()
    dist = torch.distributed
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if torch.cuda.is_available():
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend=backend or ("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"))
        atexit.register(_destroy)
    return DataParallel(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank)


def _destroy() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def is_main_process() -> bool:
    """True outside torchrun and on rank 0: the process that writes logs and pushes adapters."""
    return int(os.environ.get("RANK", "0")) == 0
