"""Low-rank adapters (LoRA, Hu et al. 2021), written from scratch: teach a frozen model something
new by training a small update W + (alpha / r) B A of each weight instead of W itself.

A frozen layer y = W x + b becomes y = W x + b + (alpha / r) B (A x) (Hu et al. 2021, eq. 3), with
A (r, in) drawn at random and B (out, r) zero, so that a freshly wrapped model computes exactly
what it did before. Only A and B train (r (in + out) numbers instead of in * out), they can be
merged into W for free inference and unmerged again, and they are all that needs saving.
Convolutions get the same treatment: A is a convolution to r channels with W's kernel, stride and
padding, B a 1x1 convolution back to out channels, so B A is again one kernel of W's shape.
Shape legend: N batch, I in features/channels, O out features/channels, r rank, k kernel side.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from minidalle import checkpoints

PARAMETERS = ("lora_A", "lora_B")  # the names every adapter's trainable tensors end with


class LoRALinear(nn.Module):
    """nn.Linear W x + b plus a trainable low-rank update (alpha / r) B A x; W and b are frozen."""

    def __init__(self, base: nn.Linear, rank: int = 4, alpha: float = 4.0, generator: torch.Generator | None = None):
        super().__init__()
        _check_rank(rank, min(base.in_features, base.out_features))
        self.base, self.rank, self.scale, self.merged = base.requires_grad_(False), rank, alpha / rank, False
        # Hu et al. 2021, section 4.1: A random Gaussian, B zero, so B A = 0 when training starts.
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_features, generator=generator).to(base.weight.device)
                                   / math.sqrt(base.in_features))  # (r, I)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, device=base.weight.device))  # (O, r)

    def delta(self) -> torch.Tensor:
        """The dense update (alpha / r) B A, shaped like W: (O, I)."""
        return self.scale * self.lora_B @ self.lora_A

    @property
    def weight(self) -> torch.Tensor:
        """The effective weight W + (alpha / r) B A (layers that call F.linear on .weight still see the update)."""
        return self.base.weight if self.merged else self.base.weight + self.delta()

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., I) -> (..., O): W x + b + (alpha / r) B (A x), never forming B A (cheap for small r)."""
        out = self.base(x)
        if self.merged:
            return out
        return out + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)  # (..., r) -> (..., O)

    def merge(self) -> None:
        """Fold B A into W (inference costs nothing extra); A and B stay for unmerge."""
        if not self.merged:
            with torch.no_grad():
                self.base.weight += self.delta()
            self.merged = True

    def unmerge(self) -> None:
        """Take B A back out of W (to train further, or to switch adapters)."""
        if self.merged:
            with torch.no_grad():
                self.base.weight -= self.delta()
            self.merged = False

    def extra_repr(self) -> str:
        return f"rank={self.rank}, scale={self.scale:g}, merged={self.merged}"


class LoRAConv2d(nn.Module):
    """nn.Conv2d plus a low-rank update: conv(x, W) + (alpha / r) conv1x1(conv(x, A), B).

    A (r, I, k, k) uses W's stride, padding and dilation; B (O, r, 1, 1). Their composition is one
    convolution with the kernel B A (O, I, k, k), which merge adds to W.
    """

    def __init__(self, base: nn.Conv2d, rank: int = 4, alpha: float = 4.0, generator: torch.Generator | None = None):
        super().__init__()
        if base.groups != 1 or base.padding_mode != "zeros":
            raise ValueError(f"LoRAConv2d supports groups=1 and zero padding, got {base}")
        k_h, k_w = base.kernel_size
        _check_rank(rank, min(base.in_channels * k_h * k_w, base.out_channels))
        self.base, self.rank, self.scale, self.merged = base.requires_grad_(False), rank, alpha / rank, False
        fan_in = base.in_channels * k_h * k_w
        self.lora_A = nn.Parameter(torch.randn(rank, base.in_channels, k_h, k_w, generator=generator)
                                   .to(base.weight.device) / math.sqrt(fan_in))  # (r, I, k, k)
        self.lora_B = nn.Parameter(torch.zeros(base.out_channels, rank, 1, 1, device=base.weight.device))  # (O, r, 1, 1)

    def delta(self) -> torch.Tensor:
        """The dense kernel update (alpha / r) B A, shaped like W: (O, I, k, k)."""
        r = self.rank
        update = self.lora_B.view(-1, r) @ self.lora_A.view(r, -1)  # (O, I * k * k)
        return self.scale * update.view_as(self.base.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (N, I, H, W) -> (N, O, H', W')."""
        out = self.base(x)
        if self.merged:
            return out
        b = self.base
        low = F.conv2d(x, self.lora_A, None, b.stride, b.padding, b.dilation)  # (N, r, H', W')
        return out + self.scale * F.conv2d(low, self.lora_B)  # (N, O, H', W')

    # the same effective weight, bias, merge and unmerge as the linear layer's (delta() has W's shape)
    weight, bias = LoRALinear.weight, LoRALinear.bias
    merge, unmerge, extra_repr = LoRALinear.merge, LoRALinear.unmerge, LoRALinear.extra_repr


LORA_LAYERS = (LoRALinear, LoRAConv2d)


def _check_rank(rank: int, limit: int) -> None:
    if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= limit:
        raise ValueError(f"rank must be an integer from 1 to {limit} (the layer's smaller side), got {rank!r}")


def add_lora(module: nn.Module, rank: int = 4, alpha: float = 4.0, convolutions: bool = True,
             where: Callable[[str], bool] = lambda name: True, generator: torch.Generator | None = None) -> list[str]:
    """Replace, in place, every nn.Linear (and nn.Conv2d when convolutions) of module whose
    qualified name passes `where` by its LoRA-wrapped version; freezes everything else.

    generator: draws the A matrices (a CPU torch.Generator; None: torch's global one), so that a
    seeded recipe gives the same adapters whatever ran before it.

    Returns the names of the wrapped layers. Call it after loading the base weights.
    """
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        raise TypeError("add_lora wraps the layers inside a module; wrap a single layer with LoRALinear/LoRAConv2d")
    for name, p in module.named_parameters():
        p.requires_grad_(name.endswith(PARAMETERS))  # adapters added before keep training
    kinds = (nn.Linear, nn.Conv2d) if convolutions else (nn.Linear,)
    wrapped = [name for name, m in module.named_modules() if isinstance(m, LORA_LAYERS)]
    targets = [(name, child) for name, child in module.named_modules()
               if isinstance(child, kinds) and where(name)
               and not any(name.startswith(f"{w}.") for w in wrapped)]  # a wrapped layer's own base stays
    for name, child in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        wrapper = LoRALinear if isinstance(child, nn.Linear) else LoRAConv2d
        setattr(parent, attr, wrapper(child, rank, alpha, generator))
    return [name for name, _ in targets]


def lora_layers(module: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(name, layer) for every LoRA layer inside module."""
    return ((name, m) for name, m in module.named_modules() if isinstance(m, LORA_LAYERS))


def lora_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """Only the adapters' tensors (A and B of every LoRA layer): what an adapter file holds."""
    return {name: p.detach() for name, p in module.named_parameters() if name.endswith(PARAMETERS)}


def merge_lora(module: nn.Module) -> None:
    """Fold every adapter of module into its frozen weight."""
    for _, layer in lora_layers(module):
        layer.merge()


def unmerge_lora(module: nn.Module) -> None:
    """Take every adapter of module back out of its weight."""
    for _, layer in lora_layers(module):
        layer.unmerge()


def count_parameters(module: nn.Module, trainable: bool = True) -> int:
    """Number of (trainable, or all) parameters of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


# ----------------------------------------------------------------------------- adapter files
@dataclass(frozen=True)
class LoRAConfig:
    """What an adapter file needs to rebuild its layers: rank, alpha and the wrapped layers' names."""

    rank: int = 4
    alpha: float = 4.0
    layers: tuple = ()


def save_lora(module: nn.Module, path, metrics: dict | None = None, force: bool = False):
    """Write only the adapters (A and B of every LoRA layer, safetensors) and their config (JSON)."""
    layers = dict(lora_layers(module))
    if not layers:
        raise ValueError("the module has no LoRA layers to save (call add_lora first)")
    ranks = {(m.rank, m.scale * m.rank) for m in layers.values()}
    if len(ranks) != 1:
        raise ValueError(f"save_lora needs one rank and alpha for every layer, found {sorted(ranks)}")
    (rank, alpha), = ranks
    checkpoints.ensure_writable(path, force)
    config = LoRAConfig(rank, alpha, tuple(layers))
    return checkpoints.save(path, "lora", config, lora_state_dict(module), metrics)


def load_lora(module: nn.Module, path) -> nn.Module:
    """Wrap module's layers as the adapter file says (if not wrapped yet) and load its A and B, in place."""
    meta = checkpoints.read_meta(path, "lora")
    config = checkpoints.config_from_dict(LoRAConfig, meta["config"])
    if not any(True for _ in lora_layers(module)):
        wrapped = add_lora(module, config.rank, config.alpha, where=lambda name: name in config.layers)
        if set(wrapped) != set(config.layers):
            missing = sorted(set(config.layers) - set(wrapped))[:5]
            raise checkpoints.CheckpointError(f"{checkpoints.paths(path)[1]}: the module has no layers {missing}")
    tensors = checkpoints.load_tensors(path, lora_state_dict(module))
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in tensors:
                p.copy_(tensors[name])
    return module
