"""Flow matching with straight paths (rectified flow) as pure functions: the path, the velocity
the network learns, and Euler and Heun ODE samplers over any number of steps.

Time t runs from 0 (data) to 1 (noise), like the diffusion decoder's timesteps. The path from a
data point x0 to its noise is the straight line x_t = (1 - t) x0 + t noise, so its velocity
dx_t/dt = noise - x0 is the same at every t; a network v(x_t, t) regressed onto it learns the
average velocity of all lines through x_t, and integrating dx/dt = v from t = 1 to t = 0 carries
noise to data (an ordinary differential equation: no noise is added on the way).
Shape legend: B batch, ... any trailing shape of x (E, 2, or C, H, W). Every function works on any
trailing shape; t is a float or a (B,) float tensor in [0, 1].

References: Lipman et al. 2023 "Flow Matching for Generative Modeling" (conditional flow matching,
the optimal-transport path of eq. 20-23 with sigma_min = 0, time reversed); Liu et al. 2023 "Flow
Straight and Fast" (rectified flow and reflow, eq. 1); Karras et al. 2022 "Elucidating the Design
Space of Diffusion-Based Generative Models" (Heun's second-order sampler, algorithm 1); Song et al.
2021 "DDIM" (eq. 12, the stochastic step used for eta > 0).
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

from minidalle.diffusion import _start

Time = Union[float, Tensor]
METHODS = ("euler", "heun")
VelocityFn = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, ...), t (B,) float) -> velocity (B, ...)
Callback = Callable[[float, Tensor, Tensor], None]  # (t, x_t, x0 guess) once per step


# ----------------------------------------------------------------------------- the path
def _time(t: Time, x: Tensor) -> Tensor:
    """t as (B, 1, ..., 1) in x's dtype and device, checked to lie in [0, 1]."""
    B = x.shape[0]
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        t = torch.full((B,), float(t), dtype=torch.float64)
    if not isinstance(t, Tensor) or not t.is_floating_point() or t.shape != (B,):
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else repr(t)
        raise ValueError(f"t must be a float or a float tensor of shape ({B},) with values in [0, 1], got {got}")
    if t.numel() and (t.min() < 0 or t.max() > 1):
        raise ValueError(f"t must lie in [0, 1] (0 = data, 1 = noise), got values "
                         f"{t.min().item():g}..{t.max().item():g}")
    return t.to(dtype=x.dtype, device=x.device).reshape(B, *([1] * (x.dim() - 1)))


def interpolate(x0: Tensor, noise: Tensor, t: Time) -> Tensor:
    """x_t = (1 - t) x0 + t noise: the straight path from data (t = 0) to noise (t = 1). (B, ...)."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
    t = _time(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: Tensor, noise: Tensor) -> Tensor:
    """d x_t / dt = noise - x0 along the straight path, what the network regresses onto (Liu et al. 2023, eq. 1)."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
    return noise - x0


def x0_from_velocity(x_t: Tensor, t: Time, velocity: Tensor) -> Tensor:
    """The data point the velocity points back to: x0 = x_t - t v (the path solved for x0). (B, ...)."""
    return x_t - _time(t, x_t) * velocity


def noise_from_velocity(x_t: Tensor, t: Time, velocity: Tensor) -> Tensor:
    """The noise the velocity points to: noise = x_t + (1 - t) v. (B, ...)."""
    return x_t + (1 - _time(t, x_t)) * velocity


def clip_velocity(x_t: Tensor, t: Time, velocity: Tensor, low: float = -1.0, high: float = 1.0) -> Tensor:
    """The velocity whose x0 guess is clamped to [low, high], as DDIM's clip_x0 does for the diffusion decoder.

    v = (x_t - clamp(x0)) / t; at t = 0 the guess is x_t itself and v is left as it is. (B, ...).
    """
    t = _time(t, x_t)
    x0 = (x_t - t * velocity).clamp(low, high)
    return torch.where(t > 0, (x_t - x0) / t.clamp(min=torch.finfo(x_t.dtype).tiny), velocity)


# ----------------------------------------------------------------------------- one step
def euler_step(x_t: Tensor, velocity: Tensor, t: float, t_next: float, eta: float = 0.0,
               noise: Optional[Tensor] = None) -> Tensor:
    """x at t_next from x at t: x_t + (t_next - t) v (Euler's method). (B, ...).

    eta > 0 takes DDIM's stochastic step instead (Song et al. 2021, eq. 12, written for the path
    x_t = alpha_t x0 + sigma_t noise with alpha_t = 1 - t, sigma_t = t): it keeps the marginals of
    x_t and adds fresh `noise` (B, ...); eta = 0 is exactly Euler's step.
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    if eta == 0:
        return x_t + (t_next - t) * velocity  # in either direction of time
    if not 0 <= t_next < t <= 1:
        raise ValueError(f"a stochastic step goes from noise towards data: need 0 <= t_next < t <= 1, "
                         f"got t={t}, t_next={t_next}")
    if noise is None:
        raise ValueError("euler_step with eta > 0 needs noise")
    x0, eps = x_t - t * velocity, x_t + (1 - t) * velocity  # the two ends of the line through x_t
    # The posterior's standard deviation for a path (alpha, sigma), eq. 16 generalized:
    # sigma_s sqrt(1 - (alpha_t sigma_s / (alpha_s sigma_t))^2), here with alpha = 1 - t, sigma = t.
    ratio = (1 - t) * t_next / ((1 - t_next) * t)
    sigma = eta * t_next * math.sqrt(max(0.0, 1 - ratio**2))
    return (1 - t_next) * x0 + math.sqrt(max(0.0, t_next**2 - sigma**2)) * eps + sigma * noise


def heun_step(velocity_fn: VelocityFn, x_t: Tensor, t: float, t_next: float,
              velocity: Optional[Tensor] = None) -> Tensor:
    """x at t_next by Heun's method (Karras et al. 2022, algorithm 1): an Euler step, then the
    average of the velocities at both ends. Two network calls (one if `velocity` at t is given).

    Unlike diffusion's denoiser at sigma = 0, the velocity at t = 0 is well defined, so the last
    step is corrected too. Works in both directions of time (t_next > t integrates towards noise).
    """
    B = x_t.shape[0]
    if velocity is None:
        velocity = velocity_fn(x_t, torch.full((B,), t, dtype=x_t.dtype, device=x_t.device))
    guess = x_t + (t_next - t) * velocity
    velocity_next = velocity_fn(guess, torch.full((B,), t_next, dtype=x_t.dtype, device=x_t.device))
    return x_t + (t_next - t) * (velocity + velocity_next) / 2


# ----------------------------------------------------------------------------- samplers
def time_grid(steps: int, start: float = 1.0, end: float = 0.0) -> list[float]:
    """steps + 1 evenly spaced times from start to end (default: noise to data)."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return torch.linspace(start, end, steps + 1, dtype=torch.float64).tolist()


def network_calls(steps: int, method: str) -> int:
    """How many times a sampler calls the network: Euler once a step, Heun twice."""
    _check_method(method)
    return steps * (2 if method == "heun" else 1)


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


@torch.no_grad()
def integrate(velocity_fn: VelocityFn, x: Tensor, steps: int, method: str = "euler", start: float = 1.0,
              end: float = 0.0, *, eta: float = 0.0, generator: Optional[torch.Generator] = None,
              callback: Optional[Callback] = None, progress: bool = False) -> Tensor:
    """Solve dx/dt = v(x, t) from t = start to t = end in `steps` even steps. x: (B, ...) at start.

    From 1 to 0 it samples (noise -> data); from 0 to 1 it inverts (data -> the noise that the
    sampler would carry back to it). eta > 0 (Euler, towards data only) adds fresh noise drawn
    from `generator` at every step.
    """
    _check_method(method)
    if eta > 0 and (method != "euler" or end >= start or generator is None):
        raise ValueError("eta > 0 needs method='euler', sampling towards data (end < start) and a generator")
    times = time_grid(steps, start, end)
    B = x.shape[0]
    for t, t_next in tqdm(list(zip(times[:-1], times[1:])), disable=not progress, desc=f"flow {method}"):
        velocity = velocity_fn(x, torch.full((B,), t, dtype=x.dtype, device=x.device))
        if callback is not None:
            callback(t, x, x0_from_velocity(x, t, velocity))
        if method == "heun":
            x = heun_step(velocity_fn, x, t, t_next, velocity)
        else:
            noise = torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype) if eta else None
            x = euler_step(x, velocity, t, t_next, eta, noise)
    return x


@torch.no_grad()
def sample(velocity_fn: VelocityFn, shape: tuple[int, ...], steps: int, generator: torch.Generator,
           method: str = "euler", *, eta: float = 0.0, x_1: Optional[Tensor] = None,
           callback: Optional[Callback] = None, progress: bool = False, dtype: torch.dtype = torch.float32) -> Tensor:
    """Draw noise x_1 ~ N(0, I) of `shape` (or take x_1) and carry it to data: x_0 (B, ...).

    With eta = 0 the result depends only on x_1, as DDIM's with eta = 0.
    """
    x = _start(shape, generator, x_1, dtype)
    return integrate(velocity_fn, x, steps, method, eta=eta, generator=generator, callback=callback,
                     progress=progress)
