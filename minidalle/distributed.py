"""Where a run happens: the device (`auto`: CUDA, then Apple's MPS, then the CPU) and, under
`torchrun`, several processes training one model with PyTorch's DistributedDataParallel.

`torchrun --nproc_per_node=N -m minidalle train ...` starts N copies of the command and tells
each its RANK, LOCAL_RANK and WORLD_SIZE (environment variables). Each process computes the
loss on its share of every global batch; in backward, DDP averages the gradients over the
processes, so every copy takes the same optimizer step and the weights stay identical.
Rank 0 alone shows progress and writes checkpoints. In one process every helper here is a
no-op, so the same training code runs with or without torchrun.
Shape legend: B local batch, W world size (processes), E embedding width.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn


# ----------------------------------------------------------------------------- devices
def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """A torch device; "auto" picks CUDA, then Apple's MPS, then the CPU.

    Under torchrun, a bare "cuda" becomes this process's GPU (cuda:LOCAL_RANK).
    """
    if str(device) == "auto":
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


# ----------------------------------------------------------------------------- processes
def world_size() -> int:
    """Number of training processes (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's index, 0 .. world_size() - 1 (0 without torchrun)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """True in the process that shows progress and writes files (rank 0)."""
    return rank() == 0


@contextlib.contextmanager
def session(device: torch.device) -> Iterator[None]:
    """Join the other processes when started by torchrun (gloo on CPU, NCCL on GPU); else do nothing."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()


def barrier() -> None:
    """Wait until every process gets here (e.g. until rank 0 has written a checkpoint)."""
    if world_size() > 1:
        dist.barrier()


def rank_seed(seed: int, rank_: int | None = None, world: int | None = None) -> int:
    """A seed of this process's own: the seed itself in one process, distinct per rank under torchrun."""
    rank_ = rank() if rank_ is None else rank_
    world = world_size() if world is None else world
    return seed * world + rank_


def local_batch_size(batch_size: int) -> int:
    """This process's share of a global batch; the global batch must split evenly."""
    world = world_size()
    if batch_size % world:
        raise ValueError(f"the batch size {batch_size} does not split evenly over {world} processes; "
                         f"choose a multiple of {world} (--batch-size)")
    return batch_size // world


# ----------------------------------------------------------------------------- training
class _Loss(nn.Module):
    """A model and its loss as one module, so DDP's forward hooks run around the whole loss
    (the prior and decoder compute theirs in `model.loss`, not in `forward`)."""

    def __init__(self, model: nn.Module, loss_fn: Callable):
        super().__init__()
        self.model, self.loss_fn = model, loss_fn

    def forward(self, step: int) -> torch.Tensor:
        return self.loss_fn(self.model, step)


def wrap(model: nn.Module, loss_fn: Callable) -> Callable[[int], torch.Tensor]:
    """step -> loss of `loss_fn(model, step)`; under torchrun through DDP (gradients averaged).

    DDP copies rank 0's weights to every process here, and each process then reseeds torch's
    global generator with its own seed, so that the noise its loss draws differs per rank.
    """
    if world_size() == 1:
        return lambda step: loss_fn(model, step)
    device = next(model.parameters()).device
    ddp = nn.parallel.DistributedDataParallel(_Loss(model, loss_fn),
                                              device_ids=[device] if device.type == "cuda" else None)
    torch.manual_seed(rank_seed(torch.initial_seed()))
    return ddp


def mean_loss(loss: torch.Tensor) -> float:
    """The loss averaged over processes (for progress and history; gradients are DDP's business)."""
    value = loss.detach().float().reshape(1)
    if world_size() > 1:
        dist.all_reduce(value)  # SUM: gloo has no AVG
        value /= world_size()
    return value.item()


class _GatherWithGrad(torch.autograd.Function):
    """all_gather whose backward sends each process the gradient of its own rows, summed over
    processes (every process computed the same global loss from the gathered rows)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)  # (W*B, E), rank order

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)  # SUM over processes of d(loss)/d(gathered rows)
        B = grad.shape[0] // world_size()
        return grad[rank() * B:(rank() + 1) * B]  # (B, E) this process's rows


def gather(x: torch.Tensor) -> torch.Tensor:
    """Rows of every process, concatenated in rank order: (B, E) -> (W*B, E); x itself in one process.

    CLIP's contrastive loss compares every image with every caption of the global batch, so
    each process needs the others' embeddings, as open_clip's ClipLoss(gather_with_grad=True).
    Each process's gradient is W times its share; DDP's average over W processes makes it exact.
    """
    return _GatherWithGrad.apply(x) if world_size() > 1 else x
