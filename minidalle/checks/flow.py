"""Checks for notebook 11 (flow matching): the straight path and its velocity, and one Heun step."""
from __future__ import annotations

import torch

from minidalle.checks._common import _call, _compare, _isolated, _name, _passed, _tensor

TIME_HINT = ("\n  hint: t holds one time per example, shape (B,); reshape it to (B, 1, ..., 1) so that it "
             "broadcasts over x0 of any shape, e.g. t.view(-1, *[1] * (x0.dim() - 1))")


@_isolated
def check_flow_pair(fn) -> None:
    """fn(x0 (B, ...), noise (B, ...), t (B,) in [0, 1]) -> (x_t, velocity): the straight path and its target."""
    __tracebackhide__ = True
    from minidalle.flow import interpolate, velocity_target
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for shape in [(6, 2), (5, 7), (4, 3, 8, 8)]:
        x0, noise = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g,
                                                                                          dtype=torch.float64)
        t = torch.rand(shape[0], generator=g, dtype=torch.float64)
        t[0], t[-1] = 0.0, 1.0
        want_x_t, want_v = interpolate(x0, noise, t), velocity_target(x0, noise)
        tt = t.view(-1, *[1] * (len(shape) - 1))
        context = f" for x0 of shape {shape}"
        got = _call(fn, x0, noise, t, hint=TIME_HINT if len(shape) > 2 else "")
        if not isinstance(got, (tuple, list)) or len(got) != 2:
            raise AssertionError(f"{name}{context} should return two tensors: (x_t, velocity)")
        x_t, velocity = got
        _tensor(name, x_t, want_x_t, context + " (x_t)", TIME_HINT)
        _compare(name, x_t, want_x_t, context + " (x_t)", wrong=[
            (tt * x0 + (1 - tt) * noise, "the path runs the other way: t = 0 is data and t = 1 is noise, so "
             "x_t = (1 - t) * x0 + t * noise"),
            ((1 - tt).sqrt() * x0 + tt.sqrt() * noise, "no square roots: that is a variance-preserving "
             "(diffusion-like) path; the straight path mixes linearly, (1 - t) * x0 + t * noise"),
            ((1 - t[0]) * x0 + t[0] * noise, "every example has its own time t[i]: use t of shape (B,) "
             "reshaped to broadcast, not one value for the whole batch"),
        ])
        _compare(name, velocity, want_v, context + " (the velocity)", wrong=[
            (x0 - noise, "the velocity is d x_t / dt: x_t moves towards the noise as t grows, so it is "
             "noise - x0"),
            (noise, "that is diffusion's eps target; flow matching regresses the velocity noise - x0"),
            (x0, "that is the x0 target of the diffusion decoder; flow matching regresses noise - x0"),
            (want_x_t - x0, "x_t - x0 = t * (noise - x0) shrinks to 0 at t = 0; the velocity of a straight "
             "line is the same at every t: noise - x0"),
        ])
    _passed(name, "the straight path and its velocity, as minidalle.flow.interpolate and velocity_target")


def _fields():
    """Velocity fields v(x, t) that accept t as a float or a tensor (B,): (description, field)."""
    def as_column(t, x):
        t = torch.as_tensor(t, dtype=x.dtype)
        return t.reshape(-1, *[1] * (x.dim() - 1)) if t.dim() else t

    def rotation(x, t):  # a curved flow: the x0 guess turns with t
        t = as_column(t, x)
        return torch.cat([x[:, 1:2] * (1 + t), -x[:, 0:1] * (1 + t)], dim=1)

    def gaussian(x, t):  # the exact field of x0 ~ N(1.5, 0.4^2)
        t = as_column(t, x)
        return -1.5 + (t - (1 - t) * 0.16) / ((1 - t) ** 2 * 0.16 + t**2) * (x - (1 - t) * 1.5)

    def image_like(x, t):
        t = as_column(t, x)
        return torch.sin(3 * x) * t - x * t**2
    return [("a rotating field on points (B, 2)", rotation), ("the exact field of a Gaussian on (B, 1)", gaussian),
            ("a nonlinear field on images (B, 3, 4, 4)", image_like)]


@_isolated
def check_heun_step(fn) -> None:
    """fn(velocity, x (B, ...), t: float, t_next: float) -> x at t_next by Heun (Karras et al. 2022, alg. 1)."""
    __tracebackhide__ = True
    from minidalle.flow import heun_step
    name, g = _name(fn), torch.Generator().manual_seed(0)
    for (description, field), shape in zip(_fields(), [(5, 2), (6, 1), (3, 3, 4, 4)]):
        for t, t_next in [(1.0, 0.75), (0.5, 0.2), (0.3, 0.0)]:
            x = torch.randn(shape, generator=g, dtype=torch.float64)
            B = shape[0]
            want = heun_step(lambda x_, t_: field(x_, t_), x, t, t_next)
            v = field(x, torch.full((B,), t, dtype=x.dtype))
            guess = x + (t_next - t) * v
            v_next = field(guess, torch.full((B,), t_next, dtype=x.dtype))
            v_at_t = field(guess, torch.full((B,), t, dtype=x.dtype))
            context = f" for {description}, from t={t} to t_next={t_next}"
            _compare(name, _call(fn, field, x, t, t_next), want, context, wrong=[
                (guess, "that is Euler's step only; Heun then evaluates the velocity again at the guess "
                 "(at t_next) and steps with the average of both velocities"),
                (x + (t_next - t) * v_next, "step with the *average* of the velocity at the start and the "
                 "one at the guess, (v + v_next) / 2, not with the second one alone"),
                (x + (t_next - t) * (v + v_next), "average the two velocities: (v + v_next) / 2"),
                (x + (t_next - t) * (v + v_at_t) / 2, "evaluate the second velocity at time t_next, where the "
                 "Euler guess lands, not at t"),
                (x + (t - t_next) * (v + v_next) / 2, "the step is (t_next - t) * velocity: t goes down towards "
                 "data, so the step is negative"),
            ])
    _passed(name, "matches minidalle.flow.heun_step on points, a Gaussian's exact field and images")
