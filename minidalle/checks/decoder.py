"""Checks for notebooks 06 (the decoder) and 07 (unCLIP)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from minidalle.checks._common import BROADCAST_HINT, _call, _compare, _gather, _isolated, _name, _passed, _same


# ----------------------------------------------------------------------------- 06 decoder
@_isolated
def check_guidance(fn) -> None:
    """fn(cond, uncond, guidance) -> classifier-free guidance mix, as Decoder.guided."""
    __tracebackhide__ = True
    from minidalle.decoder import Decoder, DecoderConfig
    name = _name(fn)
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig.tiny()).eval()
    x_t = torch.randn(3, 3, 32, 32)
    t = torch.tensor([5, 50, 90])
    embeddings = F.normalize(torch.randn(3, decoder.config.unet.embed_dim), dim=-1)
    with torch.no_grad():
        cond = decoder.unet(x_t, t, embeddings)
        uncond = decoder.unet(x_t, t, decoder.unet.null_embedding.expand_as(embeddings))
        for guidance in [1.0, 0.0, 3.0, 7.5, 0.5]:
            want = decoder.guided(x_t, t, embeddings, guidance)
            context = f" at guidance {guidance}"
            got = _call(fn, cond, uncond, guidance)
            wrong = [
                (cond + guidance * (cond - uncond), "that is the (1 + w) convention; here guidance g = 1 means no "
                 "guidance: uncond + g * (cond - uncond)"),
                (uncond + guidance * (uncond - cond), "the mix goes the wrong way: it must move from the unconditional "
                 "prediction towards (and past) the conditional one"),
            ]
            for value, message in wrong:
                if torch.is_tensor(got) and got.shape == value.shape and _same(got, value) and not _same(got, want):
                    raise AssertionError(f"{name}{context}: {message}")
            if guidance == 1.0 and torch.is_tensor(got) and got.shape == cond.shape and not _same(got, cond):
                raise AssertionError(f"{name}{context}: guidance 1 means plain conditional sampling, so the mix must "
                                     "equal the conditional prediction")
            if guidance == 0.0 and torch.is_tensor(got) and got.shape == cond.shape and not _same(got, uncond):
                raise AssertionError(f"{name}{context}: guidance 0 must give the unconditional prediction")
            _compare(name, got, want, context)
    _passed(name, "matches Decoder.guided for guidance 0, 0.5, 1, 3 and 7.5")


@_isolated
def check_eps_from_x0(fn) -> None:
    """fn(x_t (B, ...), t (B,) long, x0 (B, ...), alpha_bar (T,)) -> the noise eps (eq. 4 solved for eps)."""
    __tracebackhide__ = True
    from minidalle.diffusion import make_schedule, predict_eps_from_x0
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for kind, T, shape in [("cosine", 1000, (6, 2)), ("linear", 100, (5, 7)), ("cosine", 1000, (4, 3, 8, 8))]:
        schedule = make_schedule(kind, T)
        x_t = torch.randn(shape, generator=g, dtype=torch.float64)
        x0 = torch.randn(shape, generator=g, dtype=torch.float64).clamp(-1, 1)
        t = torch.randint(0, T, (shape[0],), generator=g)
        t[0], t[-1] = 0, T - 1
        want = predict_eps_from_x0(schedule, x_t, t, x0)
        a = _gather(schedule.alpha_bar, t, x_t)
        context = f" for x_t of shape {shape}, {kind} schedule with T={T}"
        got = _call(fn, x_t, t, x0, schedule.alpha_bar, hint=BROADCAST_HINT if len(shape) > 2 else "")
        _compare(name, got, want, context, wrong=[
            ((x_t - a * x0) / (1 - a), "eq. 4 takes square roots: eps = (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar)"),
            ((x_t - a.sqrt() * x0) / a.sqrt(), "divide by sqrt(1 - alpha_bar), the scale of the noise in x_t"),
            (x_t - a.sqrt() * x0, "divide by sqrt(1 - alpha_bar): x_t holds sqrt(1 - alpha_bar) * eps, not eps"),
            ((x_t - (1 - a).sqrt() * x0) / a.sqrt(), "that solves for x0; solve eq. 4 for eps instead"),
        ], rtol=1e-5)
    _passed(name, "matches minidalle.diffusion.predict_eps_from_x0 for points and images, t = 0 .. T-1")


# ----------------------------------------------------------------------------- 07 unCLIP
@_isolated
def check_slerp(fn) -> None:
    """fn(a (N, E), b (N, E) unit vectors, weight: float) -> spherical interpolation (N, E)."""
    __tracebackhide__ = True
    from minidalle.pipeline import slerp
    name, g = _name(fn), torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(5, 16, generator=g), dim=-1)
    b = F.normalize(torch.randn(5, 16, generator=g), dim=-1)
    for weight in [0.3, 0.5, 0.0, 1.0, 0.9]:
        context = f" at weight {weight}"
        lerp = (1 - weight) * a + weight * b
        _compare(name, _call(fn, a, b, weight), slerp(a, b, weight), context, wrong=[
            (lerp, "that is linear interpolation: between two unit vectors its points are shorter than 1 (inside "
             "the sphere); slerp moves along the sphere"),
            (F.normalize(lerp, dim=-1), "normalized linear interpolation: on the sphere, but it moves at uneven speed; "
             "in slerp the angle from a grows linearly with the weight: "
             "(sin((1 - w) theta) a + sin(w theta) b) / sin(theta)"),
            (slerp(b, a, weight), "a and b are swapped: weight 0 must give a, weight 1 must give b"),
        ])
    same = _call(fn, a[:2], a[:2].clone(), 0.5)
    if torch.is_tensor(same) and not torch.isfinite(same).all():
        raise AssertionError(f"{name} returns NaN when a == b: rounding can push the cosine a little past 1, so clamp "
                             "it into [-1, 1] (slightly inside) before acos")
    _compare(name, same, a[:2], " when a == b (it must return a)", atol=1e-3)
    _passed(name, "matches minidalle.pipeline.slerp, ends included, and survives a == b")


@_isolated
def check_text_diff_direction(fn) -> None:
    """fn(text_from (..., E), text_to (..., E)) -> unit direction from the first text to the second."""
    __tracebackhide__ = True
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for shape in [(16,), (4, 16), (3, 64)]:
        start = F.normalize(torch.randn(shape, generator=g), dim=-1)
        end = F.normalize(torch.randn(shape, generator=g), dim=-1)
        want = F.normalize(end - start, dim=-1)  # as UnCLIP.text_diff
        context = f" for text embeddings of shape {shape}"
        _compare(name, _call(fn, start, end), want, context, wrong=[
            (F.normalize(start - end, dim=-1), "the direction is the wrong way round: from the 'from' text to the "
             "'to' text is to - from"),
            (end - start, "normalize the difference to unit length (F.normalize(..., dim=-1))"),
            (F.normalize(end - start, dim=0), "normalize each row, over the embedding dimension (dim=-1)"),
        ])
    _passed(name, "the unit direction to - from, as UnCLIP.text_diff uses it")
