"""One run on several processes (DDP), as seen from inside one rank.

The launcher (``harness/execution/torchrun.py``) starts G ranks with torchrun; each builds the
same model from the same seed and trains on its share of every *global* P×K batch
(``data.loader.RankShardBatchSampler``: P/G identities × K images each). What keeps the
training the single-process one, up to floating point:

- the model's outputs and the labels of every rank are gathered (``gather_outputs``) before the
  objective, so every loss term — batch-hard triplet mining included — sees the whole global
  batch, exactly as in one process. The gather's backward sums the ranks' gradients, and DDP
  averages the parameter gradients over the ranks, so each parameter receives the gradient of
  the global loss;
- the objective is inside the DDP module with the model, so parameters of loss terms (the
  center loss's centres, stepped by their own optimiser) get the same averaged gradient on every
  rank and stay equal;
- BatchNorm layers chosen by ``train.sync_bn`` normalise with the statistics of the global
  batch (``sync_batchnorm``): ``torch.nn.SyncBatchNorm`` on CUDA, :class:`GlooSyncBatchNorm` on
  CPU (torch's refuses CPU tensors). The others use their rank's P/G×K share; their running
  statistics are rank 0's, the rank that checkpoints.

Nothing here runs at import time; torch.distributed is initialised by ``init_process_group``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn

# Rank 0 alone checkpoints and runs the periodic evaluation while the others wait at the next
# collective: the timeout must cover an evaluation, not only a training step.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in a distributed run (torchrun's RANK, WORLD_SIZE, LOCAL_RANK)."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # nccl (CUDA) or gloo (CPU)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def context_from_env(backend: str, env: Mapping[str, str] | None = None) -> DistContext:
    """The rank torchrun started this process as; a clear error outside torchrun."""
    env = os.environ if env is None else env
    missing = [k for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k not in env]
    if missing:
        raise RuntimeError(f"not started by torchrun: {', '.join(missing)} not set")
    return DistContext(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env["LOCAL_RANK"]), backend)


def init_process_group(ctx: DistContext, device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group(ctx.backend, rank=ctx.rank, world_size=ctx.world_size, timeout=COLLECTIVE_TIMEOUT)


def destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def check_batch_split(ids_per_batch: int, world_size: int, where: str = "--gpus-per-run") -> None:
    """P identities of a global batch are split between the ranks: P must be a multiple of G."""
    if world_size < 1:
        raise ValueError(f"{where} {world_size} is not valid: an integer >= 1")
    if ids_per_batch % world_size:
        valid = [g for g in range(1, ids_per_batch + 1) if ids_per_batch % g == 0]
        raise ValueError(f"{where} {world_size}: data.ids_per_batch={ids_per_batch} identities of the global P×K "
                         f"batch do not split evenly between {world_size} processes; valid process counts: "
                         f"{', '.join(map(str, valid))}")


# ---------------------------------------------------------------------------- collectives with gradients


class _GatherRows(torch.autograd.Function):
    """Every rank's rows concatenated in rank order; backward: the sum over ranks of the gradient of this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.rank, ctx.rows = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous().clone()
        dist.all_reduce(grad)  # each rank's loss reads every rank's rows
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


class _AllReduceSum(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        out = x.contiguous().clone()
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        out = grad.contiguous().clone()
        dist.all_reduce(out)
        return out


def gather_outputs(outputs: Mapping[str, torch.Tensor], labels: torch.Tensor
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The global batch's outputs and labels on every rank (rows in rank order), in one collective each.

    Outputs are B_rank×D (or B_rank) tensors; they are flattened into one B_rank×ΣD matrix so a
    many-headed model (MGN: 20 outputs) costs one all_gather, not twenty.
    """
    names = list(outputs)
    flat = [outputs[n].reshape(outputs[n].shape[0], -1) for n in names]
    widths = [f.shape[1] for f in flat]
    gathered = _GatherRows.apply(torch.cat(flat, dim=1))
    out = {}
    for name, piece in zip(names, torch.split(gathered, widths, dim=1)):
        out[name] = piece.reshape(gathered.shape[0], *outputs[name].shape[1:])
    label_parts = [torch.empty_like(labels) for _ in range(dist.get_world_size())]
    dist.all_gather(label_parts, labels.contiguous())
    return out, torch.cat(label_parts)


# ---------------------------------------------------------------------------- synchronised BatchNorm


class GlooSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm of any dimension whose training statistics are those of the global batch, on CPU (gloo).

    ``nn.SyncBatchNorm`` refuses CPU tensors (and DDP refuses it on CPU modules). Training mode on
    several ranks: the mean, then the biased variance around it, are sums all-reduced over the
    ranks (two small collectives, numerically like one big batch); running statistics are updated
    as ``F.batch_norm`` does (unbiased variance). Eval mode and one process: plain BatchNorm.
    """

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not self.training or not dist.is_initialized() or dist.get_world_size() == 1:
            return super().forward(input)
        self._check_input_dim(input)
        dims = [0, *range(2, input.dim())]
        local = torch.tensor(float(input.numel() // input.shape[1]))
        dist.all_reduce(local)
        count = local.item()
        mean = _AllReduceSum.apply(input.sum(dims)) / count
        shape = [1, -1] + [1] * (input.dim() - 2)
        centred = input - mean.reshape(shape)
        var = _AllReduceSum.apply((centred * centred).sum(dims)) / count
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
            with torch.no_grad():
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                unbiased = var.detach() * (count / max(count - 1.0, 1.0))
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        out = centred * torch.rsqrt(var + self.eps).reshape(shape)
        if self.affine:
            out = out * self.weight.reshape(shape) + self.bias.reshape(shape)
        return out


def _synced_copy(bn: nn.modules.batchnorm._BatchNorm, cls: type) -> nn.Module:
    """A ``cls`` layer holding ``bn``'s very parameters and buffers (same objects: optimiser and state_dict unchanged)."""
    new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
    if bn.affine:
        new.weight, new.bias = bn.weight, bn.bias
    new.running_mean, new.running_var = bn.running_mean, bn.running_var
    new.num_batches_tracked = bn.num_batches_tracked
    new.train(bn.training)
    return new


def sync_bn_scope(model: nn.Module, scope: str) -> list[str]:
    """Names of the BatchNorm modules ``train.sync_bn=scope`` synchronises (``head``: the "new" module group)."""
    bns = [n for n, m in model.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if scope == "off":
        return []
    if scope == "all":
        return bns
    roots = tuple(getattr(model, "module_groups", {}).get("new", ()))
    return [n for n in bns if any(n == r or n.startswith(r + ".") for r in roots)]


def sync_batchnorm(model: nn.Module, scope: str, device: torch.device) -> list[str]:
    """Replace the BatchNorm layers of ``scope`` by synchronised ones in place; returns their names."""
    cls = nn.SyncBatchNorm if device.type == "cuda" else GlooSyncBatchNorm
    names = sync_bn_scope(model, scope)
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, _synced_copy(getattr(parent, child), cls))
    return names


def wrap_ddp(module: nn.Module, device: torch.device, stages_change_parameters: bool) -> nn.Module:
    """DDP over the per-step forward (model + objective).

    Which parameters receive a gradient: an architecture may output features no loss term reads,
    so some may never get one. Without stages that set is the same every step: ``static_graph``
    learns it in the first step (and is DDP's fastest mode). Stages freeze and unfreeze parameters
    between epochs: ``find_unused_parameters`` then walks the graph from the loss values every step.
    Buffers are not synchronised in forward: running statistics are rank 0's (it alone checkpoints
    and evaluates), and every rank starts from the same ones.
    """
    import inspect

    from torch.nn.parallel import DistributedDataParallel

    options: dict[str, Any] = {"find_unused_parameters": True} if stages_change_parameters else {"static_graph": True}
    # torch 2.14 renamed broadcast_buffers (still accepted, with a warning) to forward_sync_buffers.
    named = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters \
        else "broadcast_buffers"
    options[named] = False
    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None, **options)
