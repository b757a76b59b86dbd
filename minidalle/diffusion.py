"""Gaussian diffusion as pure functions: noise schedules, the forward process, DDPM and DDIM.

Shared by the diffusion prior (vectors, x of shape (B, E)) and the image decoder
(x of shape (B, 3, 32, 32)): every function works on any trailing shape.
Shape legend: B batch, T diffusion steps, ... any trailing shape of x (E, or C, H, W).
Timesteps t are integers 0..T-1 (a LongTensor (B,) or an int); t = -1 stands for "before
the first step", where alpha_bar = 1 (clean data).

References: Ho et al. 2020 "DDPM" (eq. numbers below), Nichol & Dhariwal 2021 "Improved
DDPM" (cosine schedule), Song et al. 2021 "DDIM", Salimans & Ho 2022 (v-prediction).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
from torch import Tensor
from tqdm.auto import tqdm

Timestep = Union[int, Tensor]
PREDICTIONS = ("eps", "x0", "v")


# ----------------------------------------------------------------------------- schedules
@dataclass(frozen=True, eq=False)
class Schedule:
    """Noise schedule: betas, alphas = 1 - betas, alpha_bar = cumprod(alphas); each (T,) float64 on CPU.

    float64 keeps alpha_bar exact near 0 (cosine's last step); the helpers below cast the
    values to the dtype and device of x when they index them.
    """

    betas: Tensor  # (T,)
    alphas: Tensor  # (T,)
    alpha_bar: Tensor  # (T,) alpha_bar[t] = prod_{s<=t} (1 - betas[s])

    @property
    def T(self) -> int:
        return self.betas.shape[0]


SCHEDULES = ("linear", "cosine", "shifted-cosine")
COSINE_SHIFT = 2.0  # "shifted-cosine": the cosine schedule's SNR divided by COSINE_SHIFT**2


def make_schedule(kind: str, T: int) -> Schedule:
    """A "linear" (Ho et al. 2020), "cosine" (Nichol & Dhariwal 2021) or "shifted-cosine" (the cosine
    schedule with its SNR divided by COSINE_SHIFT**2 = 4, Hoogeboom et al. 2023) schedule of T steps."""
    if isinstance(T, bool) or not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be an integer >= 1, got {T!r}")
    if kind == "linear":
        # Ho et al. 2020, sec. 4: 1e-4..0.02 for T=1000; improved-diffusion rescales so that
        # other T destroy about as much signal. Clipped at 0.999 so tiny T stays valid.
        scale = 1000 / T
        betas = torch.linspace(scale * 1e-4, scale * 0.02, T, dtype=torch.float64).clamp(max=0.999)
    elif kind == "cosine":
        # Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(((t/T + s)/(1 + s)) pi/2).
        s = 0.008
        steps = torch.arange(T + 1, dtype=torch.float64) / T  # t/T for t = 0..T
        f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
        # Eq. 17's beta: 1 - alpha_bar(t+1)/alpha_bar(t), clipped at 0.999 to avoid a singularity at t = T.
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    elif kind == "shifted-cosine":
        # Hoogeboom et al. 2023 ("simple diffusion"), sec. 3.1: SNR'(t) = SNR(t) / shift^2, so
        # alpha_bar' = alpha_bar / (alpha_bar + shift^2 (1 - alpha_bar)); the betas follow from the ratios.
        alpha_bar = make_schedule("cosine", T).alpha_bar
        alpha_bar = alpha_bar / (alpha_bar + COSINE_SHIFT**2 * (1 - alpha_bar))  # (T,)
        previous = torch.cat([torch.ones(1, dtype=alpha_bar.dtype), alpha_bar[:-1]])  # (T,) alpha_bar'(t-1)
        betas = (1 - alpha_bar / previous).clamp(max=0.999)
    else:
        raise ValueError(f"unknown schedule kind {kind!r}; expected one of {SCHEDULES}")
    alphas = 1 - betas
    return Schedule(betas=betas, alphas=alphas, alpha_bar=torch.cumprod(alphas, dim=0))


def timesteps(steps: int, T: int) -> Tensor:
    """steps evenly spaced timesteps from T-1 down to 0, the order a sampler visits them: (steps,) long."""
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(f"steps must be an integer in 1..T={T}, got {steps!r}")
    # Starts at T-1 ("trailing"), so the first step sees pure noise. floor(x + 0.5) is monotone,
    # so the spacing >= 1 never rounds two steps together (Python's round-half-even could).
    return torch.floor(torch.linspace(T - 1, 0, steps, dtype=torch.float64) + 0.5).long()


# ----------------------------------------------------------------------------- indexing
def _timestep_tensor(t: Timestep, x: Tensor, T: int, name: str = "t", lowest: int = 0) -> Tensor:
    """t as a long tensor (B,) on CPU, checked to lie in lowest..T-1."""
    B = x.shape[0]
    if isinstance(t, int) and not isinstance(t, bool):
        t = torch.full((B,), t, dtype=torch.long)
    if not isinstance(t, Tensor) or t.dtype not in (torch.int32, torch.int64) or t.shape != (B,):
        got = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, Tensor) else repr(t)
        raise ValueError(f"{name} must be an int or an integer tensor of shape ({B},), got {got}")
    t = t.detach().cpu().long()
    if t.numel() and (t.min() < lowest or t.max() >= T):
        raise ValueError(f"{name} must lie in {lowest}..{T - 1}, got values {t.min().item()}..{t.max().item()}")
    return t


def _per_example(values: Tensor, x: Tensor) -> Tensor:
    """(B,) values as (B, 1, ..., 1) in x's dtype and device, to broadcast over x's trailing shape."""
    return values.to(dtype=x.dtype).to(x.device).reshape(x.shape[0], *([1] * (x.dim() - 1)))


def _alpha_bar(schedule: Schedule, t: Timestep, x: Tensor, name: str = "t") -> Tensor:
    """alpha_bar[t] as (B, 1, ..., 1); t = -1 gives 1 (clean data). Indexing happens on CPU in float64."""
    t = _timestep_tensor(t, x, schedule.T, name, lowest=-1)
    padded = torch.cat([torch.ones(1, dtype=schedule.alpha_bar.dtype), schedule.alpha_bar])  # (T+1,)
    return _per_example(padded[t + 1], x)


# ----------------------------------------------------------------------------- forward process
def q_sample(x0: Tensor, t: Timestep, noise: Tensor, schedule: Schedule) -> Tensor:
    """x_t ~ q(x_t | x_0) = N(sqrt(alpha_bar) x0, (1 - alpha_bar) I) (Ho et al. 2020, eq. 4). x0, noise: (B, ...)."""
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
    _timestep_tensor(t, x0, schedule.T)
    alpha_bar = _alpha_bar(schedule, t, x0)
    return alpha_bar.sqrt() * x0 + (1 - alpha_bar).sqrt() * noise


def predict_x0_from_eps(schedule: Schedule, x_t: Tensor, t: Timestep, eps: Tensor) -> Tensor:
    """x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar): eq. 4 solved for x0. (B, ...)."""
    alpha_bar = _alpha_bar(schedule, _timestep_tensor(t, x_t, schedule.T), x_t)
    return (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()


def predict_eps_from_x0(schedule: Schedule, x_t: Tensor, t: Timestep, x0: Tensor) -> Tensor:
    """eps = (x_t - sqrt(alpha_bar) x0) / sqrt(1 - alpha_bar): eq. 4 solved for eps. (B, ...)."""
    alpha_bar = _alpha_bar(schedule, _timestep_tensor(t, x_t, schedule.T), x_t)
    return (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()


def v_from_x0_eps(schedule: Schedule, x0: Tensor, eps: Tensor, t: Timestep) -> Tensor:
    """v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022, sec. 4). (B, ...)."""
    alpha_bar = _alpha_bar(schedule, _timestep_tensor(t, x0, schedule.T), x0)
    return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0


def x0_from_v(schedule: Schedule, x_t: Tensor, t: Timestep, v: Tensor) -> Tensor:
    """x0 = sqrt(alpha_bar) x_t - sqrt(1 - alpha_bar) v: (x_t, v) is a rotation of (x0, eps). (B, ...)."""
    alpha_bar = _alpha_bar(schedule, _timestep_tensor(t, x_t, schedule.T), x_t)
    return alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * v


def training_target(prediction: str, schedule: Schedule, x0: Tensor, noise: Tensor, t: Timestep) -> Tensor:
    """What a model that predicts `prediction` ("eps", "x0" or "v") regresses onto (eq. 14's target for eps)."""
    _check_prediction(prediction)
    if prediction == "eps":
        return noise
    if prediction == "x0":
        return x0
    return v_from_x0_eps(schedule, x0, noise, t)


def min_snr_weight(prediction: str, schedule: Schedule, t: Tensor, gamma: float) -> Tensor:
    """Per-sample loss weights (B,) of Min-SNR-gamma (Hang et al. 2023, eq. 8): the x0 error counted with
    weight min(SNR_t, gamma), written in the units of the model's own target (||eps error||^2 is
    SNR_t ||x0 error||^2, ||v error||^2 is (SNR_t + 1) ||x0 error||^2)."""
    _check_prediction(prediction)
    alpha_bar = schedule.alpha_bar.to(t.device)[t]
    snr = alpha_bar / (1 - alpha_bar)  # (B,)
    weight = snr.clamp(max=gamma)
    if prediction == "eps":
        return weight / snr
    if prediction == "v":
        return weight / (snr + 1)
    return weight


def x0_and_eps(schedule: Schedule, x_t: Tensor, t: Timestep, output: Tensor, prediction: str = "eps",
               clip_x0: bool = False) -> tuple[Tensor, Tensor]:
    """Turn a model's output (eps, x0 or v) into both (x0, eps), each (B, ...); clip_x0 clamps x0 to [-1, 1]."""
    _check_prediction(prediction)
    alpha_bar = _alpha_bar(schedule, _timestep_tensor(t, x_t, schedule.T), x_t)
    if prediction == "eps":
        eps = output
        x0 = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    elif prediction == "x0":
        x0 = output
        eps = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
    else:  # v: x0 and eps are both rotations of (x_t, v), no division needed
        x0 = alpha_bar.sqrt() * x_t - (1 - alpha_bar).sqrt() * output
        eps = (1 - alpha_bar).sqrt() * x_t + alpha_bar.sqrt() * output
    if clip_x0:
        # Clamp, then recompute eps so that both agree (as improved-diffusion's DDIM does).
        x0 = x0.clamp(-1, 1)
        eps = (x_t - alpha_bar.sqrt() * x0) / (1 - alpha_bar).sqrt()
    return x0, eps


def _check_prediction(prediction: str) -> None:
    if prediction not in PREDICTIONS:
        raise ValueError(f"prediction must be one of {PREDICTIONS}, got {prediction!r}")


# ----------------------------------------------------------------------------- reverse steps
def posterior_mean_variance(schedule: Schedule, x0: Tensor, x_t: Tensor, t: Timestep) -> tuple[Tensor, Tensor]:
    """Mean (B, ...) and variance (B, 1, ..., 1) of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eq. 6-7)."""
    t = _timestep_tensor(t, x_t, schedule.T)
    alpha_bar = _alpha_bar(schedule, t, x_t)
    alpha_bar_prev = _alpha_bar(schedule, t - 1, x_t)  # 1 at t = 0
    beta = _per_example(schedule.betas[t], x_t)
    alpha = _per_example(schedule.alphas[t], x_t)
    # Eq. 7: mu_tilde = sqrt(alpha_bar_prev) beta / (1 - alpha_bar) x0 + sqrt(alpha) (1 - alpha_bar_prev) / (1 - alpha_bar) x_t
    mean = (alpha_bar_prev.sqrt() * beta * x0 + alpha.sqrt() * (1 - alpha_bar_prev) * x_t) / (1 - alpha_bar)
    # Eq. 7: beta_tilde = (1 - alpha_bar_prev) / (1 - alpha_bar) beta, exactly 0 at t = 0.
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar) * beta
    return mean, variance


def ddpm_step(schedule: Schedule, x_t: Tensor, x0_pred: Tensor, t: Timestep, noise: Tensor) -> Tensor:
    """x_{t-1} ~ p(x_{t-1} | x_t) = N(mu_tilde(x_t, x0_pred), beta_tilde) (Ho et al. 2020, eq. 6-7). (B, ...)."""
    mean, variance = posterior_mean_variance(schedule, x0_pred, x_t, t)
    return mean + variance.sqrt() * noise  # no noise at t = 0, where beta_tilde = 0


def ddim_step(schedule: Schedule, x_t: Tensor, eps: Tensor, t: Timestep, t_prev: Timestep, eta: float = 0.0,
              noise: Optional[Tensor] = None, x0_pred: Optional[Tensor] = None) -> Tensor:
    """x_{t_prev} from x_t and predicted eps (Song et al. 2021, eq. 12); t_prev = -1 means clean data.

    eta = 0 is deterministic; eta = 1 with t_prev = t - 1 is DDPM. x0_pred, if given, is used
    instead of recomputing it from eps (exact when x0 was clipped). Shapes (B, ...).
    """
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    t = _timestep_tensor(t, x_t, schedule.T)
    t_prev = _timestep_tensor(t_prev, x_t, schedule.T, "t_prev", lowest=-1)
    if (t_prev >= t).any():
        raise ValueError("t_prev must be smaller than t")
    alpha_bar = _alpha_bar(schedule, t, x_t)
    alpha_bar_prev = _alpha_bar(schedule, t_prev, x_t, "t_prev")
    if x0_pred is None:
        x0_pred = (x_t - (1 - alpha_bar).sqrt() * eps) / alpha_bar.sqrt()
    # Eq. 16: sigma = eta sqrt((1 - alpha_bar_prev) / (1 - alpha_bar)) sqrt(1 - alpha_bar / alpha_bar_prev)
    sigma = eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()
    # Eq. 12: "predicted x0" + "direction pointing to x_t" + random noise.
    x_prev = alpha_bar_prev.sqrt() * x0_pred + (1 - alpha_bar_prev - sigma**2).clamp(min=0).sqrt() * eps
    if eta > 0:
        if noise is None:
            raise ValueError("ddim_step with eta > 0 needs noise")
        x_prev = x_prev + sigma * noise
    return x_prev


def ddim_invert_step(schedule: Schedule, x_s: Tensor, eps: Tensor, s: Timestep, t: Timestep) -> Tensor:
    """x_t from x_s, one deterministic DDIM step *up* (s < t; s = -1 is clean data). Shapes (B, ...).

    The exact inverse of ddim_step(eta=0) for the same eps: eq. 12 solved for x_t, so that
    ddim_step(schedule, ddim_invert_step(schedule, x_s, eps, s, t), eps, t, s) == x_s.
    """
    s = _timestep_tensor(s, x_s, schedule.T, "s", lowest=-1)
    t = _timestep_tensor(t, x_s, schedule.T, "t")
    if (s >= t).any():
        raise ValueError("ddim_invert_step goes up: s must be smaller than t")
    alpha_bar_s, alpha_bar_t = _alpha_bar(schedule, s, x_s, "s"), _alpha_bar(schedule, t, x_s)
    x0_pred = (x_s - (1 - alpha_bar_s).sqrt() * eps) / alpha_bar_s.sqrt()  # eq. 12's "predicted x0", from x_s
    return alpha_bar_t.sqrt() * x0_pred + (1 - alpha_bar_t).sqrt() * eps  # eq. 4 at level t, same x0 and eps


# ----------------------------------------------------------------------------- samplers
ModelFn = Callable[[Tensor, Tensor], Tensor]  # (x_t (B, ...), t (B,) long) -> eps, x0 or v (B, ...)
Callback = Callable[[int, Tensor, Tensor], None]  # (t, x_t, x0_pred) once per step


def _start(shape: tuple[int, ...], generator: torch.Generator, x_T: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    if x_T is not None:
        if tuple(x_T.shape) != tuple(shape):
            raise ValueError(f"x_T shape {tuple(x_T.shape)} must equal shape {tuple(shape)}")
        return x_T.clone()
    return torch.randn(shape, generator=generator, device=generator.device, dtype=dtype)


def _noise_like(x: Tensor, generator: torch.Generator) -> Tensor:
    # Drawn on the generator's device (must be x's device), so a seed gives the same samples every run.
    return torch.randn(x.shape, generator=generator, device=generator.device, dtype=x.dtype)


@torch.no_grad()
def ddpm_sample(model_fn: ModelFn, shape: tuple[int, ...], schedule: Schedule, generator: torch.Generator, *,
                prediction: str = "eps", clip_x0: bool = False, x_T: Optional[Tensor] = None,
                callback: Optional[Callback] = None, progress: bool = False,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """Ancestral sampling over all T steps (Ho et al. 2020, algorithm 2). Returns x_0 of `shape` (B, ...)."""
    _check_prediction(prediction)
    x = _start(shape, generator, x_T, dtype)
    for t in tqdm(range(schedule.T - 1, -1, -1), disable=not progress, desc="DDPM"):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0, _ = x0_and_eps(schedule, x, t_batch, model_fn(x, t_batch), prediction, clip_x0)
        if callback is not None:
            callback(t, x, x0)
        x = ddpm_step(schedule, x, x0, t_batch, _noise_like(x, generator))
    return x


@torch.no_grad()
def ddim_sample(model_fn: ModelFn, shape: tuple[int, ...], schedule: Schedule, steps: int,
                generator: torch.Generator, eta: float = 0.0, *, prediction: str = "eps", clip_x0: bool = False,
                x_T: Optional[Tensor] = None, callback: Optional[Callback] = None, progress: bool = False,
                dtype: torch.dtype = torch.float32) -> Tensor:
    """DDIM sampling over `steps` evenly spaced timesteps (Song et al. 2021, eq. 12). Returns x_0 (B, ...).

    With eta = 0 the output depends only on x_T (the generator draws x_T and nothing else);
    with eta = 1 and steps = T it is DDPM, drawing the same noise in the same order.
    Timesteps start at T-1; with the cosine schedule alpha_bar[T-1] ~ 2e-9 there, so an eps
    model's x0 = (x_t - sqrt(1 - alpha_bar) eps) / sqrt(alpha_bar) amplifies its errors:
    use clip_x0 (bounded data) or an x0/v model.
    """
    _check_prediction(prediction)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    x = _start(shape, generator, x_T, dtype)
    ts = timesteps(steps, schedule.T).tolist()
    for i in tqdm(range(len(ts)), disable=not progress, desc="DDIM"):
        t, t_prev = ts[i], (ts[i + 1] if i + 1 < len(ts) else -1)
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        x0, eps = x0_and_eps(schedule, x, t_batch, model_fn(x, t_batch), prediction, clip_x0)
        if callback is not None:
            callback(t, x, x0)
        noise = _noise_like(x, generator) if eta > 0 else None
        x = ddim_step(schedule, x, eps, t, t_prev, eta, noise, x0_pred=x0)
    return x


@torch.no_grad()
def ddim_invert(model_fn: ModelFn, x0: Tensor, schedule: Schedule, steps: int, *, prediction: str = "eps",
                clip_x0: bool = False, progress: bool = False) -> Tensor:
    """DDIM inversion (Song et al. 2021, sec. 4.3; Dhariwal & Nichol 2021, app. F): clean x0 (B, ...) -> x_T.

    Runs ddim_sample's timesteps backwards, from clean data up to T-1, so that ddim_sample with
    eta = 0, the same model_fn and steps, started from the returned x_T, draws x0 back. Each step
    up reads the model at (x_s, t), in place of the unknown (x_t, t) the step down will read: its
    eps is kept and x0 follows from x_s (ddim_invert_step), exact in the limit of small steps.
    """
    _check_prediction(prediction)
    ts = timesteps(steps, schedule.T).flip(0).tolist()  # ascending: 0, ..., T-1
    x = x0.clone()
    for s, t in tqdm(list(zip([-1] + ts[:-1], ts)), disable=not progress, desc="DDIM inversion"):
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        _, eps = x0_and_eps(schedule, x, t_batch, model_fn(x, t_batch), prediction, clip_x0)
        x = ddim_invert_step(schedule, x, eps, s, t)
    return x
