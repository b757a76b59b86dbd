"""Checks for notebooks 06 (the decoder: guidance, eps from x0, the loss, a FiLM block) and 07 (unCLIP)."""
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


# ----------------------------------------------------------------------------- 06 build the core
def _loss_variant(decoder, images, embeddings, generator, scale=True, order=("t", "noise", "drop"), drop="below",
                  target=None, reduction="mean"):
    """Decoder.loss, or one of the mistakes a student can make in it (the keyword arguments say which)."""
    from minidalle.diffusion import q_sample, training_target
    B, c = len(images), decoder.config
    x0 = images * 2 - 1 if scale else images
    draws = {}
    for what in order:  # the generator's draws, in the order given
        draws[what] = {"t": lambda: torch.randint(0, c.T, (B,), generator=generator),
                       "noise": lambda: torch.randn(x0.shape, generator=generator),
                       "drop": lambda: torch.rand(B, generator=generator)}[what]()
    t, noise = draws["t"], draws["noise"]
    mask = {"below": draws["drop"] < c.drop_condition, "above": draws["drop"] >= c.drop_condition,
            "none": torch.zeros(B, dtype=torch.bool)}[drop]
    condition = torch.where(mask[:, None], decoder.unet.null_embedding.expand(B, -1), embeddings)
    goal = training_target(target or c.prediction, decoder.schedule, x0, noise, t)
    return F.mse_loss(decoder.unet(q_sample(x0, t, noise, decoder.schedule), t, condition), goal, reduction=reduction)


def _check_gradients(name: str, got: torch.Tensor, want: torch.Tensor, mine: torch.nn.Module,
                     theirs: torch.nn.Module, context: str, inputs=()) -> None:
    """Backpropagate the same upstream gradient through both; every parameter (and input) gradient must agree."""
    __tracebackhide__ = True
    if got.grad_fn is None:
        raise AssertionError(f"{name}{context}: the result carries no gradient; keep the graph (no torch.no_grad(), "
                             ".detach(), .item() or .data), so that backward() can train the weights")
    upstream = torch.randn(want.shape, generator=torch.Generator().manual_seed(1))
    want.backward(upstream)
    got.backward(upstream)
    for (label, ours), (_, yours) in zip(mine.named_parameters(), theirs.named_parameters()):
        if yours.grad is None or not _same(yours.grad, ours.grad, rtol=1e-3, atol=1e-5):
            raise AssertionError(f"{name}{context}: same values but a different gradient for {label}: is part of the "
                                 "computation detached, or done twice?")
    for label, (ours, yours) in inputs:
        if yours.grad is None or not _same(yours.grad, ours.grad, rtol=1e-3, atol=1e-5):
            raise AssertionError(f"{name}{context}: same values but a different gradient for {label}: is part of the "
                                 "computation detached?")


@_isolated
def check_decoder_loss(fn) -> None:
    """fn(decoder, images (B, 3, S, S) in [0, 1], embeddings (B, E), generator) -> Decoder.loss's scalar."""
    __tracebackhide__ = True
    import copy

    from minidalle.decoder import Decoder, DecoderConfig
    from minidalle.unet import UNetConfig
    name = _name(fn)
    for prediction in ("x0", "eps"):
        torch.manual_seed(0)
        decoder = Decoder(DecoderConfig(unet=UNetConfig.tiny(), T=100, prediction=prediction, drop_condition=0.5))
        with torch.no_grad():
            decoder.unet.null_embedding.normal_()  # a trained-looking null embedding, unlike the zeros at init
        student = copy.deepcopy(decoder)
        g = torch.Generator().manual_seed(3)
        images = torch.rand(6, 3, 32, 32, generator=g)
        embeddings = F.normalize(torch.randn(6, 16, generator=g), dim=-1)
        context = f" (prediction={prediction!r})"

        def variant(**kwargs):
            with torch.no_grad():
                return _loss_variant(decoder, images, embeddings, torch.Generator().manual_seed(7), **kwargs)

        want = decoder.loss(images, embeddings, torch.Generator().manual_seed(7))
        got = _call(fn, student, images, embeddings, torch.Generator().manual_seed(7))
        if torch.is_tensor(got) and got.dim() != 0:
            raise AssertionError(f"{name}{context}: return one number, the mean over the batch (a 0-dim tensor), "
                                 f"not a tensor of shape {tuple(got.shape)}")
        other = "x0" if prediction == "eps" else "eps"
        try:
            _compare(name, got, want.detach(), context, rtol=1e-4, atol=1e-6, wrong=[
                (variant(scale=False), "scale the images from [0, 1] to the model's [-1, 1] first: "
                 "x0 = images * 2 - 1"),
                (variant(target=other), f"regress onto what this decoder predicts, {prediction}: "
                 "diffusion.training_target(decoder.config.prediction, decoder.schedule, x0, noise, t)"),
                (variant(drop="none"), "drop the condition: where torch.rand(B, generator=generator) < "
                 "decoder.config.drop_condition, use decoder.unet.null_embedding instead of the embedding"),
                (variant(drop="above"), "the condition is dropped where rand < drop_condition (that share of "
                 "the batch), not where it is above"),
                (variant(order=("noise", "t", "drop")), "draw from the generator in Decoder.loss's order: t "
                 "(torch.randint), then the noise (torch.randn), then the dropout mask (torch.rand)"),
                (variant(order=("t", "drop", "noise")), "draw from the generator in Decoder.loss's order: t, then the "
                 "noise, then the dropout mask"),
                (variant(reduction="sum"), "average the squared error over every pixel of every image (F.mse_loss's "
                 "default), do not sum it"),
                ])
        except AssertionError as error:
            if "wrong values" not in str(error):
                raise
            raise AssertionError(f"{name}{context}: the loss differs from Decoder.loss; draw t, the noise and the "
                                 "dropout mask from `generator` (in that order), then follow Decoder.loss step by "
                                 f"step\n  ({error})") from None
        _check_gradients(name, got, want, decoder, student, context)
    _passed(name, "equals Decoder.loss (same generator: same t, noise and dropout) with the same gradients, "
                  "for x0- and eps-predicting decoders")


def _film_variant(block, x, emb, one_plus=True, swap=False, silu_emb=True, film_after_norm=True, residual=True):
    """ResBlock.forward, or one of the mistakes a student can make in it (the keyword arguments say which)."""
    h = block.conv1(F.silu(block.norm1(x)))
    scale, shift = block.emb(F.silu(emb) if silu_emb else emb)[:, :, None, None].chunk(2, dim=1)
    if swap:
        scale, shift = shift, scale
    factor = (1 + scale) if one_plus else scale
    h = block.norm2(h) * factor + shift if film_after_norm else block.norm2(h * factor + shift)
    h = block.conv2(F.silu(h))
    return block.skip(x) + h if residual else h


@_isolated
def check_film_block(fn) -> None:
    """fn(c_in, c_out, emb_dim) -> an nn.Module like minidalle.unet.ResBlock: same weights, outputs, gradients."""
    __tracebackhide__ = True
    from minidalle.unet import ResBlock
    name = _name(fn)
    for c_in, c_out, emb_dim in [(16, 32, 24), (16, 16, 8)]:
        context = f"({c_in}, {c_out}, {emb_dim})"
        torch.manual_seed(0)
        reference = ResBlock(c_in, c_out, emb_dim, dropout=0.0)
        block = _call(fn, c_in, c_out, emb_dim)
        if not isinstance(block, torch.nn.Module):
            raise AssertionError(f"{name}({c_in}, {c_out}, {emb_dim}) should build a torch.nn.Module (a class "
                                 f"deriving from nn.Module), got {type(block).__name__}")
        expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
        yours = {k: tuple(v.shape) for k, v in block.state_dict().items()}
        if yours != expected:
            missing, extra = sorted(set(expected) - set(yours)), sorted(set(yours) - set(expected))
            shapes = [f"{k} {yours[k]} (expected {expected[k]})" for k in expected
                      if k in yours and yours[k] != expected[k]]
            if all(k.startswith("skip.") for k in missing + extra):
                skip = ("when c_in == c_out the skip is nn.Identity(), which has no weights" if c_in == c_out else
                        "when c_in != c_out the skip is a 1x1 conv, nn.Conv2d(c_in, c_out, 1)")
                raise AssertionError(f"{name}{context}: {skip} (missing: {', '.join(missing) or 'none'}; "
                                     f"unexpected: {', '.join(extra) or 'none'})")
            raise AssertionError(f"{name}{context}: its weights must be named and shaped like ResBlock's, so that the "
                                 "check can copy them in (norm1, conv1, emb = Linear(emb_dim, 2 * c_out), norm2, "
                                 f"conv2, skip). Missing: {', '.join(missing) or 'none'}; unexpected: "
                                 f"{', '.join(extra) or 'none'}; wrong shape: {', '.join(shapes) or 'none'}")
        block.load_state_dict(reference.state_dict())
        block.train()  # dropout 0: training mode must not matter
        g = torch.Generator().manual_seed(c_out)
        x = torch.randn(3, c_in, 8, 8, generator=g)
        emb = torch.randn(3, emb_dim, generator=g)
        x_mine, emb_mine = x.clone().requires_grad_(), emb.clone().requires_grad_()
        x_yours, emb_yours = x.clone().requires_grad_(), emb.clone().requires_grad_()
        want = reference(x_mine, emb_mine)
        got = _call(block, x_yours, emb_yours)
        with torch.no_grad():
            wrong = [
                (_film_variant(reference, x, emb, residual=False), "add the residual connection: return skip(x) + h"),
                (_film_variant(reference, x, emb, one_plus=False), "FiLM multiplies by (1 + scale), so that a scale "
                 "of 0 leaves the normalized features as they are"),
                (_film_variant(reference, x, emb, swap=True), "scale and shift are swapped: the first half of "
                 "emb(...)'s output (chunk(2, dim=1)[0]) is the scale"),
                (_film_variant(reference, x, emb, silu_emb=False), "apply SiLU to the conditioning vector before its "
                 "linear map: emb(F.silu(emb_vector))"),
                (_film_variant(reference, x, emb, film_after_norm=False), "normalize first, then modulate: "
                 "norm2(h) * (1 + scale) + shift"),
            ]
        _compare(name, got, want.detach(), context, wrong=wrong, rtol=1e-4, atol=1e-5)
        inputs = [("the input x", (x_mine, x_yours)), ("the conditioning vector", (emb_mine, emb_yours))]
        _check_gradients(name, got, want, reference, block, context, inputs)
    _passed(name, "same outputs and gradients as minidalle.unet.ResBlock with the same weights, with and without a "
                  "1x1 skip")
