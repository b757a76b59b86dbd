"""Checks for notebook 03 (CLIP): the contrastive loss, the capped logit scale and one training step."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from minidalle.checks._common import _call, _compare, _isolated, _name, _passed, _same, _tensor


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


def _clip_case(B: int, log_scale: float, seed: int):
    """A tiny seeded CLIP with its log scale set, and a batch of B scenes with partial captions."""
    from minidalle.clip import CLIP, CLIPConfig
    from minidalle.world import make_dataset

    torch.manual_seed(seed)
    model = CLIP(CLIPConfig.tiny()).train()
    with torch.no_grad():
        model.logit_scale.fill_(log_scale)
    data = make_dataset(B, "train", seed=seed, partial=True)
    return model, data.images, data.captions


def _wrong_clip_losses(model, images, captions) -> list:
    """(loss, message) of the plausible mistakes in a CLIP step, for the same weights and batch."""
    with torch.no_grad():
        raw_image = model.image_projection(model.visual(images))  # (B, E), not normalized yet
        ids, mask = model.tokenizer.encode(captions)
        raw_text = model.text_projection(model.text(ids, mask)[1])  # (B, E)
        image, text = F.normalize(raw_image, dim=-1), F.normalize(raw_text, dim=-1)
        scale, log_scale = model.clamped_scale(), model.logit_scale
        cos, labels = image @ text.T, torch.arange(len(images))
        rows, cols = F.cross_entropy(scale * cos, labels), F.cross_entropy(scale * cos.T, labels)

        def loss(i, t, s):
            return (F.cross_entropy(s * i @ t.T, labels) + F.cross_entropy(s * t @ i.T, labels)) / 2

    both = "the loss averages two cross-entropies: over rows (image -> caption) and over columns (caption -> image)"
    return [
        (loss(raw_image, raw_text, scale), "normalize both embeddings to unit length (F.normalize(..., dim=-1)) "
         "before the dot product: CLIP compares cosines"),
        (loss(F.normalize(raw_image, dim=0), F.normalize(raw_text, dim=0), scale), "normalize each embedding "
         "(dim=-1), not each feature across the batch (dim=0)"),
        (rows, f"only image -> caption: {both}"),
        (cols, f"only caption -> image: {both}"),
        (rows + cols, "off by a factor 2: average the two directions, don't add them"),
        (loss(image, text, scale.exp()), "the scale is exponentiated twice: model.clamped_scale() is already "
         "exp(logit_scale), capped at 100"),
        (loss(image, text, log_scale.exp().exp()), "the scale is exponentiated twice: exp(logit_scale) is the scale"),
        (loss(image, text, log_scale), "model.logit_scale is the log of the scale: multiply the cosines by "
         "model.clamped_scale() (= exp(logit_scale), capped at 100)"),
        (loss(image, text, 1.0), "multiply the cosines by the scale model.clamped_scale() before the softmax"),
        (loss(image, text, 1 / scale), "that divides by the scale (or multiplies by the temperature): multiply "
         "the cosines by model.clamped_scale()"),
        (loss(image, text, log_scale.exp()), "the scale is capped at 100: use model.clamped_scale(), not "
         "logit_scale.exp()"),
    ]


@_isolated
def check_clip_step(fn) -> None:
    """fn(model, optimizer, images (B, 3, 32, 32), captions) -> loss (0-d): one CLIP training step up to
    loss.backward(), which leaves the gradients of the symmetric contrastive loss in the model."""
    __tracebackhide__ = True
    import copy

    name = _name(fn)
    for B, log_scale, seed in [(6, math.log(1 / 0.07), 0), (5, math.log(3.0), 1), (4, math.log(300.0), 2)]:
        model, images, captions = _clip_case(B, log_scale, seed)
        context = f" (B={B}, scale {min(math.exp(log_scale), 100):.3g})"
        reference = copy.deepcopy(model)
        want = reference(images, captions)  # minidalle.clip.CLIP.forward: the package's loss
        want.backward()
        student = copy.deepcopy(model)
        stale = {}
        for index, p in enumerate(student.parameters()):  # the previous step's gradients, still there
            stale[index] = torch.randn(p.shape, generator=torch.Generator().manual_seed(index))
            p.grad = stale[index].clone()  # a copy: backward() accumulates into p.grad in place
        optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
        got = _call(fn, student, optimizer, images, captions)
        got = _tensor(name, got, want, context, " (return the loss itself: one number, a 0-d tensor)")
        if not _same(got, want):
            for value, message in _wrong_clip_losses(model, images, captions):
                if _same(got, value):
                    raise AssertionError(f"{name}{context}: {message}")
            raise AssertionError(f"{name}{context}: the loss differs from minidalle's CLIP for the same weights and "
                                 f"batch (expected {want.item():.6g}, got {got.item():.6g}); check each piece: "
                                 "embeddings (B, E) of unit length, logits (B, B) = scale * image @ text.T, labels "
                                 "arange(B), the mean of both cross-entropies")
        named = list(zip(student.named_parameters(), reference.parameters(), stale.values()))
        missing = [n for (n, p), _, _ in named if p.grad is None]
        if len(missing) == len(named) or all(torch.equal(p.grad, s) for (_, p), _, s in named if p.grad is not None):
            raise AssertionError(f"{name}{context}: call loss.backward() after optimizer.zero_grad(): the "
                                 "step leaves no new gradients in the model's parameters")
        if all(p.grad is not None and _same(p.grad, r.grad + s) for (_, p), r, s in named):
            raise AssertionError(f"{name}{context}: call optimizer.zero_grad() before loss.backward(): the "
                                 "gradients were added to the previous step's, which were still there")
        if missing:
            modules = ", ".join(dict.fromkeys(n.split(".")[0] for n in missing))
            raise AssertionError(f"{name}{context}: no gradient reached {modules}: compute the loss from the "
                                 "model's own modules and scale (no .item(), no torch.no_grad(), no .detach())")
        wrong = [(n, p.grad) for (n, p), r, _ in named if not _same(p.grad, r.grad, rtol=1e-3, atol=1e-5)]
        if [n for n, _ in wrong] == ["logit_scale"] and not wrong[0][1].any():
            raise AssertionError(f"{name}{context}: the temperature gets a zero gradient: keep the scale a tensor "
                                 "(model.clamped_scale(), no .item() or float()), so that training can learn it")
        if wrong:
            raise AssertionError(f"{name}{context}: the loss is right but its gradients are not (in {len(wrong)} "
                                 f"of {len(named)} parameters, e.g. {wrong[0][0]}): call backward() once, on the "
                                 "very loss you return")
        for (n, p), (_, q) in zip(student.named_parameters(), model.named_parameters()):
            if not torch.equal(p, q):
                raise AssertionError(f"{name}{context}: stop after loss.backward(): the training loop clips the "
                                     f"gradients and calls optimizer.step() itself ({n} changed)")
    _passed(name, "same loss and same gradients as minidalle's CLIP for the same weights and batch")
