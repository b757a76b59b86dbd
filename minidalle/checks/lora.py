"""Checks for notebook 10 (refinement): a LoRA layer's forward pass, and merging a LoRA convolution."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from minidalle.checks._common import _call, _compare, _isolated, _name, _passed

LEADING_HINT = ("\n  hint: x may have any number of leading dimensions (..., in): x @ A.T (or F.linear(x, A)) "
                "works for all of them")


@_isolated
def check_lora_forward(fn) -> None:
    """fn(x (..., I), weight (O, I), bias (O,), A (r, I), B (O, r), scale) -> W x + b + scale B A x."""
    __tracebackhide__ = True
    from minidalle.lora import LoRALinear
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for shape, (I, O, r), zero_b in [((5, 6), (6, 4, 2), False), ((2, 3, 6), (6, 9, 3), False),
                                     ((4, 8), (8, 8, 1), True)]:
        x, W, b = torch.randn(shape, generator=g), torch.randn(O, I, generator=g), torch.randn(O, generator=g)
        A, B = torch.randn(r, I, generator=g), torch.zeros(O, r) if zero_b else torch.randn(O, r, generator=g)
        scale = 4.0 / r  # alpha / r with alpha = 4
        layer = LoRALinear(nn.Linear(I, O), rank=r, alpha=4.0)  # the package's layer, with these tensors
        with torch.no_grad():
            layer.base.weight.copy_(W), layer.base.bias.copy_(b), layer.lora_A.copy_(A), layer.lora_B.copy_(B)
            want = layer(x)
        base, update = F.linear(x, W, b), F.linear(F.linear(x, A), B)  # (..., O) each
        context = f" for x of shape {shape}, W {(O, I)}, rank {r}" + (" and B = 0" if zero_b else "")
        got = _call(fn, x, W, b, A, B, scale, hint=LEADING_HINT if len(shape) > 2 else "")
        _compare(name, got, want, context, wrong=[] if zero_b else [
            (base + update, "multiply the low-rank update B A x by scale (alpha / r), as the frozen model's output "
             "must not drown in it"),
            (F.linear(x, W) + scale * update, "add the frozen layer's bias b: LoRA changes W only"),
            (scale * update, "LoRA adds its update to the frozen layer's output W x + b; keep that output"),
            (base, "the low-rank update scale * B A x is missing"),
            (base + update / scale, "the update is scaled by scale = alpha / r, not divided by it"),
        ], shape_hint=f" (the output has the layer's {O} out features)")
    _passed(name, "matches minidalle.lora.LoRALinear, B = 0 gives the frozen layer, any leading dimensions")


@_isolated
def check_merge_conv(fn) -> None:
    """fn(weight (O, I, k, k), A (r, I, k, k), B (O, r, 1, 1), scale) -> merged kernel (O, I, k, k)."""
    __tracebackhide__ = True
    from minidalle.lora import LoRAConv2d
    name, g = _name(fn), torch.Generator().manual_seed(1)
    for O, I, k, r in [(4, 3, 3, 2), (6, 5, 1, 3), (8, 4, 2, 1), (5, 2, 3, 4)]:
        W, bias = torch.randn(O, I, k, k, generator=g), torch.randn(O, generator=g)
        A, B = torch.randn(r, I, k, k, generator=g), torch.randn(O, r, 1, 1, generator=g)
        scale, kept = 4.0 / r, W.clone()
        layer = LoRAConv2d(nn.Conv2d(I, O, k, padding=k // 2), rank=r, alpha=4.0)
        with torch.no_grad():
            layer.base.weight.copy_(W), layer.base.bias.copy_(bias), layer.lora_A.copy_(A), layer.lora_B.copy_(B)
            x = torch.randn(2, I, 7, 7, generator=g)
            reference = layer(x)  # conv(x, W) + scale conv1x1(conv(x, A), B): two convolutions
        update = (B.view(O, r) @ A.view(r, -1)).view(O, I, k, k)  # (O, I, k, k)
        want = W + scale * update
        context = f" for W of shape {(O, I, k, k)}, rank {r}"
        got = _call(fn, W, A, B, scale)
        if not torch.equal(W, kept):
            raise AssertionError(f"{name} changed `weight` in place{context}: return a new tensor (W + ...), so "
                                 "that the frozen kernel stays available to unmerge or to switch adapters")
        scrambled = W + scale * (B.view(O, r) @ A.view(r, -1)).view(O, k, k, I).permute(0, 3, 1, 2)
        _compare(name, got, want, context, wrong=[
            (W + update, "multiply B A by scale (alpha / r)"),
            (scale * update, "the merged kernel is the frozen one plus the update: W + scale * B A"),
            (W - scale * update, "add the update (merge); subtracting it is unmerge"),
            (scrambled, "the kernel entries are scrambled: A.view(r, -1) flattens (I, k, k) in that order, so view "
             "B A back as (O, I, k, k), W's own layout"),
        ], shape_hint=" (the kernel of the conv: (O, I, k, k))")
        _compare(name, F.conv2d(x, got, bias, padding=k // 2), reference,
                 " (one convolution with your kernel vs the LoRA layer's two)", rtol=1e-4, atol=1e-4)
    _passed(name, "one convolution with the merged kernel equals minidalle.lora.LoRAConv2d's two")
