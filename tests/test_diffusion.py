"""Tests for minidalle.diffusion: golden numbers, closed forms, DDIM(eta=1) == DDPM, a tiny overfit run."""
import math

import pytest
import torch

from minidalle import diffusion as D

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- schedules
# Golden alpha_bar values at T=1000, computed independently with math.fsum over log1p (linear)
# and the closed form f(t+1)/f(0) (cosine); linear alpha_bar[999] ~ 4.04e-5 is the known value.
LINEAR_GOLDEN = {0: 0.9999, 99: 0.8970181457, 499: 0.07858724288, 998: 4.118193638e-05, 999: 4.035829765e-05}
COSINE_GOLDEN = {0: 0.9999587158, 99: 0.9720927371, 499: 0.4938435904, 998: 2.428766907e-06}


def test_linear_alpha_bar_golden():
    schedule = D.make_schedule("linear", 1000)
    for t, value in LINEAR_GOLDEN.items():
        assert schedule.alpha_bar[t].item() == pytest.approx(value, abs=1e-6, rel=1e-6)
    betas = [1e-4 + i * (0.02 - 1e-4) / 999 for i in range(1000)]  # written as an arithmetic sequence
    for t in (10, 250, 750):
        closed = math.exp(math.fsum(math.log1p(-b) for b in betas[: t + 1]))
        assert schedule.alpha_bar[t].item() == pytest.approx(closed, abs=1e-9)


def test_cosine_alpha_bar_golden():
    schedule = D.make_schedule("cosine", 1000)
    for t, value in COSINE_GOLDEN.items():
        assert schedule.alpha_bar[t].item() == pytest.approx(value, abs=1e-6, rel=1e-6)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (10, 250, 750):
        assert schedule.alpha_bar[t].item() == pytest.approx(f((t + 1) / 1000) / f(0), abs=1e-9)
    # Only the last beta hits the 0.999 clip (improved-diffusion's max_beta).
    assert schedule.betas[-1].item() == 0.999 and schedule.betas[:-1].max().item() < 0.999
    assert schedule.alpha_bar[999].item() == pytest.approx(schedule.alpha_bar[998].item() * 1e-3, rel=1e-9)


def test_shifted_cosine_divides_the_snr_by_four():
    # Hoogeboom et al. 2023, sec. 3.1: the shifted schedule's SNR is the cosine one's / shift^2, at every t,
    # written here from the closed form of eq. 17 (not through make_schedule("cosine"))
    assert D.COSINE_SHIFT == 2.0
    schedule = D.make_schedule("shifted-cosine", 1000)
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2
    for t in (0, 10, 250, 500, 750, 990):
        cosine = f((t + 1) / 1000) / f(0)
        shifted = schedule.alpha_bar[t].item()
        assert shifted / (1 - shifted) == pytest.approx(cosine / (1 - cosine) / 4, rel=1e-9)
    snr = schedule.alpha_bar / (1 - schedule.alpha_bar)
    assert int((snr < 0.1).sum()) == 362  # the cosine schedule: 197 of 1,000, the linear one: 515


@pytest.mark.parametrize("kind", D.SCHEDULES)
@pytest.mark.parametrize("T", [1, 10, 50, 1000])
def test_schedule_consistent(kind, T):
    schedule = D.make_schedule(kind, T)
    assert schedule.T == T
    assert schedule.betas.shape == schedule.alphas.shape == schedule.alpha_bar.shape == (T,)
    assert schedule.alpha_bar.dtype == torch.float64
    assert ((schedule.betas > 0) & (schedule.betas < 1)).all()
    torch.testing.assert_close(schedule.alphas, 1 - schedule.betas)
    torch.testing.assert_close(schedule.alpha_bar, torch.cumprod(schedule.alphas, 0))
    assert (schedule.alpha_bar[1:] < schedule.alpha_bar[:-1]).all()


def test_linear_rescaled_for_other_T():
    torch.testing.assert_close(D.make_schedule("linear", 50).betas[[0, -1]],
                               torch.tensor([20 * 1e-4, 20 * 0.02], dtype=torch.float64))


def test_timesteps():
    assert D.timesteps(1000, 1000).tolist() == list(range(999, -1, -1))
    assert D.timesteps(5, 1000).tolist() == [999, 749, 500, 250, 0]
    assert D.timesteps(1, 10).tolist() == [9]
    for steps in range(1, 40):  # distinct and descending for every steps <= T
        ts = D.timesteps(steps, 39)
        assert len(set(ts.tolist())) == steps and (ts[1:] < ts[:-1]).all()


# ----------------------------------------------------------------------------- forward process
def test_q_sample_mean_and_variance():
    schedule = D.make_schedule("cosine", 100)
    g = torch.Generator().manual_seed(0)
    N = 200_000
    x0 = torch.full((N, 2), 0.7, dtype=torch.float64)
    t = torch.full((N,), 40, dtype=torch.long)
    x_t = D.q_sample(x0, t, torch.randn(N, 2, generator=g, dtype=torch.float64), schedule)
    alpha_bar = schedule.alpha_bar[40].item()
    # Ho et al. 2020 eq. 4: mean sqrt(alpha_bar) x0, variance 1 - alpha_bar.
    assert x_t.mean(0).tolist() == pytest.approx([math.sqrt(alpha_bar) * 0.7] * 2, abs=5e-3)
    assert x_t.var(0).tolist() == pytest.approx([1 - alpha_bar] * 2, rel=1e-2)


def test_q_sample_broadcasts_per_example():
    schedule = D.make_schedule("linear", 1000)
    x0, noise = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    t = torch.tensor([0, 500, 999])
    x_t = D.q_sample(x0, t, noise, schedule)
    for i in range(3):
        a = schedule.alpha_bar[t[i]].float()
        torch.testing.assert_close(x_t[i], a.sqrt() * x0[i] + (1 - a).sqrt() * noise[i])


@pytest.mark.parametrize("shape", [(4, 6), (4, 3, 8, 8)])
def test_conversions_round_trip(shape):
    schedule = D.make_schedule("cosine", 200)
    x0, eps = torch.randn(shape, dtype=torch.float64), torch.randn(shape, dtype=torch.float64)
    t = torch.tensor([0, 50, 150, 199])
    x_t = D.q_sample(x0, t, eps, schedule)
    torch.testing.assert_close(D.predict_x0_from_eps(schedule, x_t, t, eps), x0)
    torch.testing.assert_close(D.predict_eps_from_x0(schedule, x_t, t, x0), eps)
    v = D.v_from_x0_eps(schedule, x0, eps, t)
    torch.testing.assert_close(D.x0_from_v(schedule, x_t, t, v), x0)
    for prediction, output in (("eps", eps), ("x0", x0), ("v", v)):
        torch.testing.assert_close(D.training_target(prediction, schedule, x0, eps, t), output)
        got_x0, got_eps = D.x0_and_eps(schedule, x_t, t, output, prediction)
        torch.testing.assert_close(got_x0, x0)
        torch.testing.assert_close(got_eps, eps)


def test_clip_x0_keeps_eps_consistent():
    schedule = D.make_schedule("linear", 100)
    x_t, out, t = torch.randn(8, 2) * 3, torch.randn(8, 2) * 3, torch.full((8,), 30)
    x0, eps = D.x0_and_eps(schedule, x_t, t, out, "eps", clip_x0=True)
    assert x0.abs().max() <= 1
    torch.testing.assert_close(D.predict_x0_from_eps(schedule, x_t, t, eps), x0)


# ----------------------------------------------------------------------------- reverse steps
def test_posterior_variance_is_beta_tilde():
    schedule = D.make_schedule("linear", 1000)
    t = torch.tensor([0, 1, 500, 999])
    x = torch.zeros(4, 5, dtype=torch.float64)
    _, variance = D.posterior_mean_variance(schedule, x, x, t)
    ab, b = schedule.alpha_bar.tolist(), schedule.betas.tolist()
    expected = [0.0] + [(1 - ab[i - 1]) / (1 - ab[i]) * b[i] for i in (1, 500, 999)]  # Ho et al. eq. 7
    assert variance.shape == (4, 1)
    assert variance.flatten().tolist() == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_posterior_mean_is_x0_at_t0():
    schedule = D.make_schedule("cosine", 50)
    x0, x_t = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    mean, _ = D.posterior_mean_variance(schedule, x0, x_t, 0)
    torch.testing.assert_close(mean, x0)


def _fake_model(x_t, t):
    """A fixed, deterministic, non-trivial 'denoiser' (no parameters): mixes x_t with t."""
    return torch.tanh(x_t * 0.8 + 0.01 * t.to(x_t.dtype).reshape(-1, *[1] * (x_t.dim() - 1)))


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ddim_eta1_all_steps_equals_ddpm(prediction, kind):
    schedule = D.make_schedule(kind, 50)
    shape = (6, 3, 2, 2)
    ddpm = D.ddpm_sample(_fake_model, shape, schedule, torch.Generator().manual_seed(3),
                         prediction=prediction, dtype=torch.float64)
    ddim = D.ddim_sample(_fake_model, shape, schedule, 50, torch.Generator().manual_seed(3), eta=1.0,
                         prediction=prediction, dtype=torch.float64)
    torch.testing.assert_close(ddim, ddpm, rtol=1e-9, atol=1e-9)


def test_ddim_step_eta1_equals_ddpm_step():
    schedule = D.make_schedule("linear", 100)
    x_t, x0, noise = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    t = torch.tensor([1, 40, 99])
    eps = D.predict_eps_from_x0(schedule, x_t, t, x0)
    torch.testing.assert_close(D.ddim_step(schedule, x_t, eps, t, t - 1, eta=1.0, noise=noise),
                               D.ddpm_step(schedule, x_t, x0, t, noise))


def test_ddim_eta0_is_deterministic():
    schedule = D.make_schedule("cosine", 100)
    x_T = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    a = D.ddim_sample(_fake_model, (5, 2), schedule, 10, torch.Generator().manual_seed(1), x_T=x_T)
    b = D.ddim_sample(_fake_model, (5, 2), schedule, 10, torch.Generator().manual_seed(2), x_T=x_T)
    assert torch.equal(a, b)
    c = D.ddpm_sample(_fake_model, (5, 2), schedule, torch.Generator().manual_seed(1), x_T=x_T)
    d = D.ddpm_sample(_fake_model, (5, 2), schedule, torch.Generator().manual_seed(2), x_T=x_T)
    assert not torch.equal(c, d)  # DDPM draws fresh noise each step


def test_samplers_reproducible_and_callback():
    schedule = D.make_schedule("linear", 20)
    seen = []
    a = D.ddim_sample(_fake_model, (3, 2), schedule, 5, torch.Generator().manual_seed(7), eta=0.5,
                      callback=lambda t, x_t, x0: seen.append(t))
    b = D.ddim_sample(_fake_model, (3, 2), schedule, 5, torch.Generator().manual_seed(7), eta=0.5)
    assert torch.equal(a, b) and seen == D.timesteps(5, 20).tolist()


# ----------------------------------------------------------------------------- DDIM inversion
def test_ddim_invert_step_closed_form_and_round_trip():
    schedule = D.make_schedule("cosine", 100)
    g = torch.Generator().manual_seed(0)
    x_s = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    eps = torch.randn(4, 3, 2, 2, generator=g, dtype=torch.float64)
    for s, t in [(-1, 0), (0, 20), (40, 99), (torch.tensor([-1, 3, 50, 98]), torch.tensor([5, 4, 70, 99]))]:
        x_t = D.ddim_invert_step(schedule, x_s, eps, s, t)
        a_s = D._alpha_bar(schedule, s if torch.is_tensor(s) else torch.full((4,), s), x_s)
        a_t = D._alpha_bar(schedule, t if torch.is_tensor(t) else torch.full((4,), t), x_s)
        by_hand = a_t.sqrt() * (x_s - (1 - a_s).sqrt() * eps) / a_s.sqrt() + (1 - a_t).sqrt() * eps
        torch.testing.assert_close(x_t, by_hand, rtol=1e-12, atol=1e-12)
        # one DDIM step down (eta = 0) with the same eps lands exactly where the step up started
        torch.testing.assert_close(D.ddim_step(schedule, x_t, eps, t, s), x_s, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(D.ddim_invert_step(schedule, x_s, eps, -1, 0),  # from clean data: eq. 4 itself
                               D.q_sample(x_s, 0, eps, schedule))
    with pytest.raises(ValueError, match="s must be smaller than t"):
        D.ddim_invert_step(schedule, x_s, eps, 10, 10)


def _gaussian_denoiser(mu: float, sigma: float, schedule, prediction: str):
    """The exact E[x0 | x_t] (or E[eps | x_t]) for data ~ N(mu, sigma^2 I): a closed-form diffusion model."""
    def model(x_t, t):
        a = D._alpha_bar(schedule, t, x_t)
        z_score = (x_t - a.sqrt() * mu) / (a * sigma**2 + 1 - a)  # (B, ...)
        return mu + a.sqrt() * sigma**2 * z_score if prediction == "x0" else (1 - a).sqrt() * z_score
    return model


@pytest.mark.parametrize("prediction", ["eps", "x0"])
def test_ddim_invert_follows_the_gaussian_ode_and_reconstructs(prediction):
    """For Gaussian data the DDIM ODE keeps each point's z-score: x_t = sqrt(ab) mu + sqrt(ab sigma^2 + 1 - ab) z.
    Inversion must land there (up to the step size), and sampling from its x_T must give x0 back."""
    mu, sigma = 0.3, 0.5
    schedule = D.make_schedule("cosine", 1000)
    model = _gaussian_denoiser(mu, sigma, schedule, prediction)
    x0 = mu + sigma * torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a_T = schedule.alpha_bar[-1].item()
    ode_x_T = math.sqrt(a_T) * mu + math.sqrt(a_T * sigma**2 + 1 - a_T) * (x0 - mu) / sigma  # closed form
    errors, reconstruction = [], []
    for steps in (10, 50, 250):
        x_T = D.ddim_invert(model, x0, schedule, steps, prediction=prediction)
        back = D.ddim_sample(model, x0.shape, schedule, steps, torch.Generator(), prediction=prediction, x_T=x_T,
                             dtype=torch.float64)
        errors.append((x_T - ode_x_T).abs().max().item())
        reconstruction.append((back - x0).abs().max().item())
    # first order, like DDIM itself: 5x the steps, about a fifth of the error (measured 0.24, 0.060, 0.015)
    assert errors[0] / errors[1] > 3.5 and errors[1] / errors[2] > 3.5 and errors[2] < 0.02
    assert reconstruction[0] / reconstruction[1] > 3.5 and reconstruction[1] / reconstruction[2] > 3.5
    assert reconstruction[2] < 0.02  # max over 256 values; measured 0.017 at 250 steps


# ----------------------------------------------------------------------------- bad arguments
@pytest.mark.parametrize("call, message", [
    (lambda: D.make_schedule("quadratic", 10), "unknown schedule kind"),
    (lambda: D.make_schedule("linear", 0), "T must be"),
    (lambda: D.make_schedule("cosine", 2.5), "T must be"),
    (lambda: D.timesteps(0, 10), "steps must be"),
    (lambda: D.timesteps(11, 10), "steps must be"),
    (lambda: D.q_sample(torch.zeros(2, 3), torch.tensor([0, 10]), torch.zeros(2, 3), D.make_schedule("linear", 10)), "must lie in 0..9"),
    (lambda: D.q_sample(torch.zeros(2, 3), torch.tensor([0, -1]), torch.zeros(2, 3), D.make_schedule("linear", 10)), "must lie in 0..9"),
    (lambda: D.q_sample(torch.zeros(2, 3), torch.tensor([0.0, 1.0]), torch.zeros(2, 3), D.make_schedule("linear", 10)), "integer tensor"),
    (lambda: D.q_sample(torch.zeros(2, 3), torch.tensor([0, 1, 2]), torch.zeros(2, 3), D.make_schedule("linear", 10)), "shape \\(2,\\)"),
    (lambda: D.q_sample(torch.zeros(2, 3), 1, torch.zeros(2, 4), D.make_schedule("linear", 10)), "noise shape"),
    (lambda: D.training_target("score", D.make_schedule("linear", 10), torch.zeros(1), torch.zeros(1), 0), "prediction must be"),
    (lambda: D.ddim_step(D.make_schedule("linear", 10), torch.zeros(1, 2), torch.zeros(1, 2), 3, 5), "t_prev must be smaller"),
    (lambda: D.ddim_step(D.make_schedule("linear", 10), torch.zeros(1, 2), torch.zeros(1, 2), 3, 2, eta=1.0), "needs noise"),
    (lambda: D.ddim_sample(_fake_model, (1, 2), D.make_schedule("linear", 10), 5, torch.Generator(), eta=-1), "eta must be"),
    (lambda: D.ddpm_sample(_fake_model, (1, 2), D.make_schedule("linear", 10), 0), "torch.Generator"),
    (lambda: D.ddpm_sample(_fake_model, (1, 2), D.make_schedule("linear", 10), torch.Generator(), prediction="mu"), "prediction must be"),
])
def test_bad_arguments(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- tiny overfit
class TinyDenoiser(torch.nn.Module):
    """MLP on (x_t, sinusoidal features of t/T) -> x0 prediction, for 2-D points."""

    def __init__(self, T: int, width: int = 128):
        super().__init__()
        self.T = T
        self.register_buffer("freqs", torch.arange(1, 9).float() * math.pi / 2)
        self.net = torch.nn.Sequential(torch.nn.Linear(2 + 16, width), torch.nn.SiLU(),
                                       torch.nn.Linear(width, width), torch.nn.SiLU(), torch.nn.Linear(width, 2))

    def forward(self, x_t, t):
        angles = (t.float() / self.T)[:, None] * self.freqs  # (B, 8)
        return self.net(torch.cat([x_t, angles.sin(), angles.cos()], dim=1))


def test_tiny_denoiser_overfits_four_points():
    torch.manual_seed(0)
    data = torch.tensor([[-1.0, -1.0], [-1.0, 1.0], [1.0, -1.0], [1.0, 1.0]])
    schedule, steps, B = D.make_schedule("cosine", 50), 800, 256
    model = TinyDenoiser(schedule.T)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    lr_decay = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x0 = data[torch.randint(0, 4, (B,), generator=g)]
        t = torch.randint(0, schedule.T, (B,), generator=g)
        noise = torch.randn(B, 2, generator=g)
        loss = (model(D.q_sample(x0, t, noise, schedule), t) - D.training_target("x0", schedule, x0, noise, t)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        lr_decay.step()
    samples = D.ddpm_sample(model, (512, 2), schedule, torch.Generator().manual_seed(1), prediction="x0")
    distance, nearest = torch.cdist(samples, data).min(dim=1)
    assert distance.median() < 0.1 and distance.quantile(0.9) < 0.25
    assert torch.bincount(nearest, minlength=4).min() > 512 * 0.1  # every point is generated, no collapse


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_samplers_run_on_cuda():
    schedule = D.make_schedule("cosine", 20)
    g = torch.Generator(device="cuda").manual_seed(0)
    x = D.ddim_sample(_fake_model, (4, 3, 8, 8), schedule, 5, g, eta=1.0, clip_x0=True)
    y = D.ddpm_sample(_fake_model, (4, 3, 8, 8), schedule, torch.Generator(device="cuda").manual_seed(0))
    assert x.device.type == y.device.type == "cuda" and torch.isfinite(x).all() and torch.isfinite(y).all()
    x0 = torch.randn(4, 5, device="cuda")
    t = torch.tensor([0, 5, 10, 19], device="cuda")
    assert D.q_sample(x0, t, torch.randn_like(x0), schedule).device.type == "cuda"


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_min_snr_weight_counts_the_x0_error_with_min_snr_gamma(prediction):
    """Min-SNR-gamma (Hang et al. 2023): whatever the model predicts, weight * ||target error||^2 equals
    min(SNR_t, gamma) * ||x0 error||^2, the x0 error of the same prediction."""
    torch.manual_seed(0)
    schedule = D.make_schedule("cosine", 1000)
    t = torch.tensor([0, 100, 500, 900, 999])
    x0, noise = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    x_t = D.q_sample(x0, t, noise, schedule)
    target = D.training_target(prediction, schedule, x0, noise, t)
    output = target + 0.1 * torch.randn_like(target)  # an imperfect model
    x0_hat, _ = D.x0_and_eps(schedule, x_t, t, output, prediction)
    snr = schedule.alpha_bar[t] / (1 - schedule.alpha_bar[t])
    weighted = D.min_snr_weight(prediction, schedule, t, 5.0) * (output - target).pow(2).flatten(1).sum(1)
    torch.testing.assert_close(weighted, snr.clamp(max=5.0) * (x0_hat - x0).pow(2).flatten(1).sum(1),
                               rtol=1e-3, atol=1e-6)
    assert D.min_snr_weight(prediction, schedule, t, 1e9).shape == (5,)
