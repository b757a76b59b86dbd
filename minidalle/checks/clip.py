"""Checks for notebook 03 (CLIP): the contrastive loss and the capped logit scale."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minidalle.checks._common import _call, _compare, _isolated, _name, _passed


# ----------------------------------------------------------------------------- 03 CLIP
@_isolated
def check_clip_loss(fn) -> None:
    """fn(image_features (B, E), text_features (B, E), logit_scale) -> symmetric InfoNCE loss (0-d)."""
    __tracebackhide__ = True
    from minidalle.clip import contrastive_loss
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for B, E, scale in [(8, 16, 1 / 0.07), (5, 8, 100.0), (16, 32, 1.0), (1, 4, 10.0)]:
        image = F.normalize(torch.randn(B, E, generator=g), dim=-1)
        text = F.normalize(torch.randn(B, E, generator=g), dim=-1)
        logit_scale = torch.tensor(scale)
        want = contrastive_loss(image, text, logit_scale)
        logits, labels = scale * image @ text.T, torch.arange(B)
        rows, cols = F.cross_entropy(logits, labels), F.cross_entropy(logits.T, labels)
        context = f" for a batch of B={B} pairs, logit_scale={scale:.4g}"
        cos = image @ text.T
        _compare(name, _call(fn, image, text, logit_scale), want, context, wrong=[
            (rows, "only image -> text: CLIP averages the cross-entropy over rows (image -> text) and over "
             "columns (text -> image)"),
            (cols, "only text -> image: CLIP averages the cross-entropy over rows (image -> text) and over "
             "columns (text -> image)"),
            (rows + cols, "off by a factor 2: average the two directions, don't add them"),
            ((F.cross_entropy(cos, labels) + F.cross_entropy(cos.T, labels)) / 2,
             "multiply the cosine similarities by logit_scale before the softmax"),
            ((F.cross_entropy(math.exp(scale) * cos, labels) + F.cross_entropy(math.exp(scale) * cos.T, labels)) / 2,
             "logit_scale is already exponentiated here (as in open_clip): don't exp it again"),
            ((F.cross_entropy(logits, labels, reduction="sum") + F.cross_entropy(logits.T, labels, reduction="sum"))
             / 2, f"off by a factor B={B}: average the cross-entropy over the batch, don't sum it"),
        ], shape_hint=" (one number: a 0-d tensor, averaged over the batch)")
    _passed(name, "matches minidalle.clip.contrastive_loss (symmetric, scaled, averaged)")


@_isolated
def check_logit_scale(fn) -> None:
    """fn(log_scale 0-d tensor) -> exp(log_scale) capped at 100, differentiable below the cap."""
    __tracebackhide__ = True
    from minidalle.clip import MAX_LOGIT_SCALE
    name = _name(fn)
    for value in [math.log(1 / 0.07), 0.0, -1.0, math.log(100) - 0.01, math.log(100) + 0.01, 5.0, 10.0]:
        log_scale = torch.tensor(value, requires_grad=True)
        context = f" for log_scale = {value:.4g}"
        got = _call(fn, log_scale)
        want = log_scale.detach().exp().clamp(max=MAX_LOGIT_SCALE)
        x = log_scale.detach()
        _compare(name, got, want, context, wrong=[
            (x.clamp(max=MAX_LOGIT_SCALE), "logit_scale is stored as a log: exponentiate it (the scale is exp(log_scale))"),
            (x.clamp(max=MAX_LOGIT_SCALE).exp(), "cap the scale itself at 100 (that is log_scale at log 100 = 4.61), "
             "not the log at 100"),
            (x.exp().clamp(max=math.log(MAX_LOGIT_SCALE)), "the cap is 100 on the scale (temperature >= 1/100), "
             "not log 100"),
            ((-x).exp(), "that is the temperature; the scale that multiplies the cosines is its inverse, exp(log_scale)"),
            (x.exp().clamp(min=MAX_LOGIT_SCALE), "use clamp(max=100): the scale may not exceed 100"),
        ], shape_hint=" (one number, like log_scale)")
        if value < math.log(100) - 1e-3:
            if not got.requires_grad:
                raise AssertionError(f"{name}{context}: the result carries no gradient, so training could not learn "
                                     "the temperature: stay in torch (no .item(), math.exp or float())")
            got.backward()
            if log_scale.grad is None or not math.isclose(log_scale.grad.item(), math.exp(value), rel_tol=1e-4):
                raise AssertionError(f"{name}{context}: below the cap the gradient d scale / d log_scale must be "
                                     f"exp(log_scale) = {math.exp(value):.4g}, got {log_scale.grad}")
    _passed(name, "exp(log_scale), capped at 100, with the gradient flowing below the cap")
