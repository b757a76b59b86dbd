"""Checks for notebooks 04 (diffusion basics) and 05 (the diffusion prior)."""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from minidalle.checks._common import BROADCAST_HINT, _call, _compare, _describe, _gather, _isolated, _name, _passed


# ----------------------------------------------------------------------------- 04 diffusion
@_isolated
def check_q_sample(fn) -> None:
    """fn(x0 (B, ...), t (B,) long, noise (B, ...), alpha_bar (T,)) -> x_t (Ho et al. 2020, eq. 4)."""
    __tracebackhide__ = True
    from minidalle.diffusion import make_schedule, q_sample
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for kind, T, shape in [("cosine", 1000, (16, 2)), ("linear", 50, (5, 7)), ("cosine", 1000, (4, 3, 8, 8))]:
        schedule = make_schedule(kind, T)
        x0, noise = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
        t = torch.randint(0, T, (shape[0],), generator=g)
        t[0], t[-1] = 0, T - 1
        want = q_sample(x0, t, noise, schedule)
        a = _gather(schedule.alpha_bar, t, x0)
        a_prev = _gather(schedule.alpha_bar, t - 1, x0)
        context = f" for x0 of shape {shape}, {kind} schedule with T={T}"
        got = _call(fn, x0, t, noise, schedule.alpha_bar, hint=BROADCAST_HINT if len(shape) > 2 else "")
        _compare(name, got, want, context, wrong=[
            (a * x0 + (1 - a) * noise, "eq. 4 takes square roots: sqrt(alpha_bar) * x0 + sqrt(1 - alpha_bar) * noise"),
            (a.sqrt() * noise + (1 - a).sqrt() * x0, "x0 and noise are swapped: the signal x0 is scaled by "
             "sqrt(alpha_bar), the noise by sqrt(1 - alpha_bar)"),
            (a.sqrt() * x0 + (1 - a.sqrt()) * noise, "the noise is scaled by sqrt(1 - alpha_bar), not 1 - sqrt(alpha_bar)"),
            (a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * noise, "off by one step: use alpha_bar[t], the signal left "
             "after step t (t = 0 is the first step)"),
            (a[:1].sqrt() * x0 + (1 - a[:1]).sqrt() * noise, "every example has its own timestep t[i]: gather "
             "alpha_bar[t] (shape (B,)), not one value for the whole batch"),
        ])
    _passed(name, "matches minidalle.diffusion.q_sample for points and images, both schedules, t = 0 .. T-1")


@_isolated
def check_ddim_step(fn) -> None:
    """fn(x_t, eps, t: int, t_prev: int, alpha_bar (T,)) -> x_{t_prev}, DDIM with eta = 0; t_prev = -1 is clean."""
    __tracebackhide__ = True
    from minidalle.diffusion import ddim_step, make_schedule
    name, g = _name(fn), torch.Generator().manual_seed(0)
    cases = [("cosine", 1000, 520, 500, (6, 2)), ("cosine", 1000, 999, 979, (2, 3, 4, 4)), ("linear", 100, 99, 89, (5, 2)),
             ("linear", 100, 40, 20, (3, 5)), ("cosine", 1000, 0, -1, (6, 2)), ("linear", 100, 9, -1, (4, 3))]
    for kind, T, t, t_prev, shape in cases:
        schedule = make_schedule(kind, T)
        x_t = torch.randn(shape, generator=g, dtype=torch.float64)
        eps = torch.randn(shape, generator=g, dtype=torch.float64)
        want = ddim_step(schedule, x_t, eps, t, t_prev)
        a, a_prev = schedule.alpha_bar[t].item(), (schedule.alpha_bar[t_prev].item() if t_prev >= 0 else 1.0)
        x0 = (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)
        last = schedule.alpha_bar[-1].item()
        context = f" for t={t}, t_prev={t_prev} ({kind} schedule, T={T})"
        _compare(name, _call(fn, x_t, eps, t, t_prev, schedule.alpha_bar), want, context, wrong=[
            (math.sqrt(last) * x0 + math.sqrt(1 - last) * eps, "at t_prev = -1 (the jump to clean data) alpha_bar_prev "
             "is 1; in Python alpha_bar[-1] is the schedule's *last* value (almost 0)"),
            (math.sqrt(a_prev) * x0 + math.sqrt(1 - a) * eps, "the direction term uses the previous noise level: "
             "sqrt(1 - alpha_bar_prev) * eps"),
            (x0, "that is the predicted x0; the step returns sqrt(alpha_bar_prev) * x0 + sqrt(1 - alpha_bar_prev) * eps"),
            (a_prev * x0 + (1 - a_prev) * eps, "eq. 12 takes square roots: sqrt(alpha_bar_prev) and "
             "sqrt(1 - alpha_bar_prev)"),
        ], rtol=1e-5)
    _passed(name, "matches minidalle.diffusion.ddim_step (eta = 0), including the last jump to t_prev = -1")


# ----------------------------------------------------------------------------- 05 prior
@_isolated
def check_best_of_n(fn) -> None:
    """fn(candidates (B, N, E), text (B, E), both unit-norm) -> the candidate closest to each text, (B, E)."""
    __tracebackhide__ = True
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for B, N, E in [(4, 3, 16), (3, 5, 8), (1, 1, 4), (6, 2, 32)]:
        candidates = F.normalize(torch.randn(B, N, E, generator=g), dim=-1)
        text = F.normalize(torch.randn(B, E, generator=g), dim=-1)
        scores = (candidates * text[:, None]).sum(dim=-1)  # (B, N), as DiffusionPrior.sample
        rows = torch.arange(B)
        want = candidates[rows, scores.argmax(dim=1)]
        context = f" for B={B} prompts with N={N} candidates of width E={E}"
        got = _call(fn, candidates, text)
        if torch.is_tensor(got) and got.shape == (B,) and not got.is_floating_point():
            raise AssertionError(f"{name}{context} returned indices: return the chosen embeddings (B, E), "
                                 "not their indices")
        _compare(name, got, want, context, wrong=[
            (candidates[rows, scores.argmin(dim=1)], "you kept the *least* similar candidate: use argmax"),
            (candidates[:, 0], "you kept the first candidate: keep the one with the highest cosine to its text"),
        ], shape_hint="\n  hint: pick one row per prompt: candidates[torch.arange(B), best]")
    _passed(name, "keeps the candidate with the highest cosine to its text, as DiffusionPrior.sample")


@_isolated
def check_standardize(fn) -> None:
    """fn(embeddings (B, E)) -> (standardized (B, E), mean (E,), std 0-d): DiffusionPrior.set_statistics."""
    __tracebackhide__ = True
    from minidalle.prior import DiffusionPrior, PriorConfig
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for B, E in [(64, 16), (256, 32), (2, 4)]:
        x = torch.randn(B, E, generator=g) * torch.linspace(0.2, 3, E) + torch.linspace(-1, 1, E)
        prior = DiffusionPrior(PriorConfig(embed_dim=E, width=8, layers=0, heads=1, T=10))
        prior.set_statistics(x)
        mean, std = prior.mean, prior.std
        context = f" for embeddings of shape {(B, E)}"
        got = _call(fn, x)
        if not isinstance(got, (tuple, list)) or len(got) != 3:
            raise AssertionError(f"{name}{context} should return three things: (standardized, mean, std)")
        z, got_mean, got_std = got
        if torch.is_tensor(got_mean) and got_mean.numel() == 1 and E > 1:
            raise AssertionError(f"{name}{context}: the mean is one value per dimension, shape ({E},): mean(dim=0)")
        _compare(name, got_mean, mean, context + " (the mean)")
        if torch.is_tensor(got_std) and got_std.numel() == E and E > 1:
            raise AssertionError(f"{name}{context}: use one std for all dimensions (a scalar: the per-dimension stds "
                                 "averaged); a std per dimension would stretch some directions more than others")
        if not isinstance(got_std, numbers.Real) and not (torch.is_tensor(got_std) and got_std.numel() == 1):
            raise AssertionError(f"{name}{context}: the std should be one number (a 0-d tensor), got {_describe(got_std)}")
        centered = x - mean
        _compare(name, torch.as_tensor(got_std).reshape(()), std, context + " (the std)", wrong=[
            (centered.std(), "average the per-dimension stds, (x - mean).std(dim=0).mean(); the std of all numbers "
             "at once is a different quantity"),
            (centered.std(dim=0, unbiased=False).mean(), "use torch's default (unbiased) std, as the package does"),
        ])
        _compare(name, z, centered / std, context + " (the standardized embeddings)", wrong=[
            (x / std, "subtract the mean before dividing by the std"),
            (centered * std, "divide by the std, don't multiply"),
        ])
    _passed(name, "same mean and std as DiffusionPrior.set_statistics, and the standardized embeddings")
