"""Flow matching (minidalle.flow) against closed forms on a 1-D Gaussian, the flow decoder
(minidalle.flow_decoder) with the pipeline and the CLI on tiny models, and the race helpers."""
import dataclasses
import json

import pytest
import torch

from minidalle import flow, race
from minidalle.__main__ import main
from minidalle.checkpoints import CheckpointError
from minidalle.clip import CLIP, CLIPConfig, save_clip
from minidalle.decoder import Decoder, DecoderConfig, save_decoder
from minidalle.flow_decoder import (FlowDecoder, FlowDecoderConfig, load_any_decoder, load_flow_decoder,
                                    save_flow_decoder)
from minidalle.pipeline import UnCLIP
from minidalle.prior import DiffusionPrior, PriorConfig, save_prior
from minidalle.train import TrainConfig, Trainer
from minidalle.unet import UNetConfig

M, S = 1.5, 0.4  # data: x0 ~ N(M, S^2); noise ~ N(0, 1)


def gaussian_velocity(x, t):
    """The exact velocity field E[noise - x0 | x_t = x] for x0 ~ N(M, S^2), by Gaussian conditioning:
    x_t ~ N((1 - t) M, (1 - t)^2 S^2 + t^2) and Cov(noise - x0, x_t) = t - (1 - t) S^2."""
    t = t.reshape(-1, *[1] * (x.dim() - 1)).to(x.dtype)
    variance = (1 - t) ** 2 * S**2 + t**2
    return -M + (t - (1 - t) * S**2) / variance * (x - (1 - t) * M)


# ----------------------------------------------------------------------------- the path
def test_interpolate_endpoints_and_target_round_trip():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    torch.testing.assert_close(flow.interpolate(x0, noise, 0.0), x0)
    torch.testing.assert_close(flow.interpolate(x0, noise, 1.0), noise)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    x_t = flow.interpolate(x0, noise, t)
    torch.testing.assert_close(x_t[2], (x0[2] + noise[2]) / 2)
    v = flow.velocity_target(x0, noise)
    torch.testing.assert_close(v, noise - x0)
    torch.testing.assert_close(flow.x0_from_velocity(x_t, t, v), x0, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(flow.noise_from_velocity(x_t, t, v), noise, atol=1e-6, rtol=1e-6)
    # The path is straight: its velocity is the same at every t (finite difference).
    h = 1e-3
    torch.testing.assert_close((flow.interpolate(x0, noise, 0.3 + h) - flow.interpolate(x0, noise, 0.3)) / h, v,
                               atol=1e-3, rtol=1e-3)


def test_regression_target_has_the_closed_form_velocity_as_its_mean():
    """Least squares of noise - x0 on x_t at fixed t recovers the exact field, linear in x for a Gaussian."""
    g = torch.Generator().manual_seed(0)
    n = 400_000
    for t in (0.2, 0.5, 0.8):
        x0 = M + S * torch.randn(n, 1, generator=g, dtype=torch.float64)
        noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
        x_t, target = flow.interpolate(x0, noise, t), flow.velocity_target(x0, noise)
        design = torch.cat([x_t, torch.ones_like(x_t)], dim=1)  # (n, 2)
        slope, intercept = torch.linalg.lstsq(design, target).solution[:, 0]
        probe = torch.tensor([[-1.0], [0.5], [2.0]], dtype=torch.float64)
        fitted = slope * probe + intercept
        torch.testing.assert_close(fitted, gaussian_velocity(probe, torch.full((3,), t)), atol=0.01, rtol=0)


def test_clip_velocity_clamps_the_x0_guess_only():
    x_t = torch.tensor([[0.0, 3.0], [0.5, -4.0]])
    v = torch.tensor([[0.2, -1.0], [0.1, -2.0]])
    t = torch.tensor([0.5, 0.25])
    clipped = flow.clip_velocity(x_t, t, v)
    guess = flow.x0_from_velocity(x_t, t, v)  # [[-0.1, 3.5], [0.475, -3.5]]
    torch.testing.assert_close(flow.x0_from_velocity(x_t, t, clipped), guess.clamp(-1, 1))
    torch.testing.assert_close(clipped[:, 0], v[:, 0])  # guesses inside [-1, 1] keep their velocity
    torch.testing.assert_close(flow.clip_velocity(x_t, 0.0, v), v)  # at t = 0 the guess is x_t itself


# ----------------------------------------------------------------------------- samplers
def test_one_euler_step_lands_on_the_data_mean():
    """At t = 1, x_1 is pure noise, independent of x0, so v(x, 1) = x - E[x0]: one step gives E[x0]."""
    x1 = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    out = flow.integrate(gaussian_velocity, x1, steps=1, method="euler")
    torch.testing.assert_close(out, torch.full_like(x1, M))
    # On any linear field v = a x + b, one step from t = 1 to 0 is x - (a x + b).
    a, b = 0.7, -0.2
    out = flow.integrate(lambda x, t: a * x + b, x1, steps=1, method="euler")
    torch.testing.assert_close(out, x1 - (a * x1 + b))


@pytest.mark.parametrize("method, steps, atol", [("heun", 50, 1e-3), ("euler", 400, 5e-3)])
def test_the_exact_field_transports_noise_to_data(method, steps, atol):
    """The ODE of the exact field is the monotone map of N(0, 1) onto N(M, S^2): x0 = M + S x1."""
    x1 = torch.linspace(-3, 3, 13, dtype=torch.float64)[:, None]
    out = flow.integrate(gaussian_velocity, x1, steps, method)
    torch.testing.assert_close(out, M + S * x1, atol=atol, rtol=0)
    back = flow.integrate(gaussian_velocity, out, steps, method, start=0.0, end=1.0)  # inversion
    torch.testing.assert_close(back, x1, atol=20 * atol, rtol=0)


def test_heun_is_second_order_and_euler_first_order():
    x1 = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    exact = M + S * x1

    def error(method, steps):
        return (flow.integrate(gaussian_velocity, x1, steps, method) - exact).abs().max().item()

    heun_ratio, euler_ratio = error("heun", 8) / error("heun", 16), error("euler", 8) / error("euler", 16)
    assert 3.2 < heun_ratio < 4.8, heun_ratio  # halving the step divides the error by 2^2
    assert 1.6 < euler_ratio < 2.4, euler_ratio  # ... by 2^1
    assert error("heun", 4) < error("euler", 8)  # same number of network calls, smaller error


def test_heun_step_by_hand_and_network_calls():
    calls = []

    def field(x, t):
        calls.append(t[0].item())
        return x * t[:, None]

    x = torch.tensor([[2.0]])
    out = flow.heun_step(field, x, 1.0, 0.5)
    v1 = 2.0 * 1.0
    guess = 2.0 - 0.5 * v1
    v2 = guess * 0.5
    assert out.item() == pytest.approx(2.0 - 0.5 * (v1 + v2) / 2)
    assert calls == [1.0, 0.5]
    calls.clear()
    flow.integrate(field, x, 3, "heun")
    assert len(calls) == flow.network_calls(3, "heun") == 6
    calls.clear()
    flow.integrate(field, x, 3, "euler")
    assert calls == pytest.approx([1.0, 2 / 3, 1 / 3]) and flow.network_calls(3, "euler") == 3


def test_stochastic_step_is_ddpms_posterior_and_eta_zero_is_euler():
    """Given the true pair (x0, noise), eta = 1 draws x_s from q(x_s | x_t, x0): mean and variance
    of the Gaussian posterior of the path x_t = (1 - t) x0 + t noise (Ho et al. 2020, eq. 7)."""
    g = torch.Generator().manual_seed(0)
    n, t, s = 400_000, 0.7, 0.3
    x0 = torch.full((n, 1), 0.8, dtype=torch.float64)
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
    fresh = torch.randn(n, 1, generator=g, dtype=torch.float64)
    x_t, v = flow.interpolate(x0, noise, t), flow.velocity_target(x0, noise)
    torch.testing.assert_close(flow.euler_step(x_t, v, t, s), x_t + (s - t) * v)
    torch.testing.assert_close(flow.euler_step(x_t, v, t, s, eta=0.0, noise=fresh), x_t + (s - t) * v)
    x_s = flow.euler_step(x_t, v, t, s, eta=1.0, noise=fresh)
    # Forward from s to t: x_t = a x_s + N(0, b^2) with a = (1-t)/(1-s), b^2 = t^2 - a^2 s^2; Bayes on the pair.
    a = (1 - t) / (1 - s)
    b2 = t**2 - a**2 * s**2
    precision = 1 / s**2 + a**2 / b2
    mean = ((1 - s) * x0 / s**2 + a * x_t / b2) / precision
    torch.testing.assert_close(x_s.mean(), mean.mean(), atol=0.005, rtol=0)
    assert (x_s - mean).var().item() == pytest.approx(1 / precision, rel=0.01)
    assert x_s.var().item() == pytest.approx(s**2, rel=0.01)  # the marginal q(x_s | x0) is kept


def test_stochastic_sampler_with_many_steps_draws_the_data_distribution():
    x1 = torch.randn(50_000, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for eta in (0.0, 1.0):
        out = flow.integrate(gaussian_velocity, x1, 200, "euler", eta=eta, generator=torch.Generator().manual_seed(1))
        assert out.mean().item() == pytest.approx(M, abs=0.01) and out.std().item() == pytest.approx(S, abs=0.01)


def test_sample_is_seeded_and_depends_only_on_x1():
    field = lambda x, t: gaussian_velocity(x, t)  # noqa: E731
    a = flow.sample(field, (4, 1), 5, torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, flow.sample(field, (4, 1), 5, torch.Generator().manual_seed(0)))
    assert not torch.allclose(a, flow.sample(field, (4, 1), 5, torch.Generator().manual_seed(1)))
    x1 = torch.randn(4, 1)
    b = [flow.sample(field, (4, 1), 5, torch.Generator().manual_seed(k), x_1=x1) for k in (0, 1)]
    torch.testing.assert_close(b[0], b[1])
    seen = []
    flow.sample(field, (4, 1), 4, torch.Generator(), callback=lambda t, x, x0: seen.append(t))
    assert seen == pytest.approx([1.0, 0.75, 0.5, 0.25])


def test_bad_inputs_get_clear_errors():
    x = torch.zeros(3, 2)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        flow.interpolate(x, x, 1.5)
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        flow.interpolate(x, x, torch.zeros(2))
    with pytest.raises(ValueError, match="float"):
        flow.interpolate(x, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="noise shape"):
        flow.interpolate(x, torch.zeros(3, 3), 0.5)
    with pytest.raises(ValueError, match="steps"):
        flow.time_grid(0)
    with pytest.raises(ValueError, match="method"):
        flow.integrate(gaussian_velocity, x, 2, "rk4")
    with pytest.raises(ValueError, match="eta"):
        flow.euler_step(x, x, 1.0, 0.5, eta=-1)
    with pytest.raises(ValueError, match="needs noise"):
        flow.euler_step(x, x, 1.0, 0.5, eta=1.0)
    with pytest.raises(ValueError, match="eta > 0"):
        flow.sample(gaussian_velocity, (3, 2), 2, torch.Generator(), "heun", eta=1.0)
    with pytest.raises(ValueError, match="x_T shape"):
        flow.sample(gaussian_velocity, (3, 2), 2, torch.Generator(), x_1=torch.zeros(2, 2))


# ----------------------------------------------------------------------------- the flow decoder
def test_config_copies_the_decoders_conditioning_and_checks_itself():
    decoder = DecoderConfig(unet=UNetConfig(width=32, embed_dim=16), drop_condition=0.2, guidance=3.0)
    config = FlowDecoderConfig.like(decoder, steps=8)
    assert (config.unet, config.drop_condition, config.guidance, config.steps) == (decoder.unet, 0.2, 3.0, 8)
    with pytest.raises(ValueError, match="method"):
        FlowDecoderConfig(method="ddim")
    with pytest.raises(ValueError, match="steps"):
        FlowDecoderConfig(steps=0)


def test_loss_is_the_velocity_regression_with_dropped_conditions():
    torch.manual_seed(0)
    model = FlowDecoder(FlowDecoderConfig.tiny())
    images, embeddings = torch.rand(4, 3, 32, 32), torch.randn(4, 16)
    g = torch.Generator().manual_seed(3)
    t, noise = torch.rand(4, generator=g), torch.randn(4, 3, 32, 32, generator=g)
    drop = torch.rand(4, generator=g) < 0.1
    cond = torch.where(drop[:, None], model.unet.null_embedding.expand(4, -1), embeddings)
    x0 = images * 2 - 1
    x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
    want = (model.unet(x_t, 1000 * t, cond) - (noise - x0)).pow(2).mean()
    got = model.loss(images, embeddings, torch.Generator().manual_seed(3))
    torch.testing.assert_close(got, want)
    got.backward()
    assert model.unet.stem.weight.grad.abs().sum() > 0


def test_sampling_shapes_seeds_methods_and_guidance():
    torch.manual_seed(0)
    model = FlowDecoder(FlowDecoderConfig.tiny()).eval()
    e = torch.randn(2, 16)
    for steps, method in ((1, "euler"), (1, "heun"), (6, "euler"), (3, "heun")):
        a = model.sample(e, seed=1, steps=steps, method=method)
        assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
        torch.testing.assert_close(a, model.sample(e, seed=1, steps=steps, method=method))
    assert not torch.allclose(model.sample(e, seed=1), model.sample(e, seed=2))
    assert not torch.allclose(model.sample(e, seed=1, method="euler"), model.sample(e, seed=1, method="heun"))
    x_t, t = torch.randn(2, 3, 32, 32), torch.tensor([0.3, 0.9])
    plain = model.unet(x_t, 1000 * t, e)
    torch.testing.assert_close(model.velocity(x_t, t, e, 1.0, clip_x0=False), plain)
    uncond = model.unet(x_t, 1000 * t, None)
    torch.testing.assert_close(model.velocity(x_t, t, e, 3.0, clip_x0=False), uncond + 3 * (plain - uncond),
                               atol=1e-5, rtol=1e-4)
    x_T = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.sample(e, seed=0, x_T=x_T), model.sample(e, seed=5, x_T=x_T))
    assert not torch.allclose(model.sample(e, seed=0, x_T=x_T, eta=1.0), model.sample(e, seed=5, x_T=x_T, eta=1.0))


def test_flow_decoder_overfits_two_images_and_inverts_them():
    """Two images (16x16 to keep it quick), two embeddings: after a short fit, a few Euler steps
    draw each image's object, and the inverted noise of an image decodes back to it."""
    torch.manual_seed(0)
    from minidalle.world import Attributes, render

    images = torch.nn.functional.avg_pool2d(render([Attributes("square", "red", False, None, "large", "left"),
                                                    Attributes("circle", "blue", False, None, "large", "right")],
                                                   seed=0), 2)  # (2, 3, 16, 16)
    embeddings = torch.eye(2, 16) * 4
    unet = dataclasses.replace(UNetConfig.tiny(), image_size=16)
    model = FlowDecoder(FlowDecoderConfig(unet=unet, steps=8, drop_condition=0.0, guidance=1.0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for step in range(200):
        loss = model.loss(images.repeat(4, 1, 1, 1), embeddings.repeat(4, 1), torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    out = model.sample(embeddings, seed=0)
    objects = (images[0] - images[1]).abs().amax(dim=0) > 0.2  # (16, 16): where the two images differ
    error = (out - images).abs()[:, :, objects].mean(dim=(1, 2))
    swapped = (out - images.flip(0)).abs()[:, :, objects].mean(dim=(1, 2))
    assert (error < swapped / 2).all(), (error, swapped)
    x1 = model.invert(images, embeddings, steps=20, method="heun")
    back = model.sample(embeddings, x_T=x1, steps=20, method="heun")
    assert (back - images).abs().mean() < 0.01


def test_bad_embeddings_and_steps():
    model = FlowDecoder(FlowDecoderConfig.tiny())
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        model.sample(torch.randn(2, 64))
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        model.loss(torch.rand(2, 3, 32, 32), torch.randn(2, 8))
    with pytest.raises(ValueError, match="steps"):
        model.sample(torch.randn(2, 16), steps=0)
    with pytest.raises(ValueError, match="method"):
        model.sample(torch.randn(2, 16), method="ddim")


def test_save_load_identical_mismatch_and_kind(tmp_path):
    model = FlowDecoder(FlowDecoderConfig.tiny()).eval()
    save_flow_decoder(model, tmp_path / "flow", metrics={"note": 1})
    e = torch.randn(1, 16)
    loaded = load_flow_decoder(tmp_path / "flow")
    torch.testing.assert_close(model.sample(e, seed=0), loaded.sample(e, seed=0))
    assert loaded.metrics == {"note": 1} and loaded.config == model.config
    assert isinstance(load_any_decoder(tmp_path / "flow"), FlowDecoder)
    save_decoder(Decoder(DecoderConfig.tiny()), tmp_path / "decoder")
    assert isinstance(load_any_decoder(tmp_path / "decoder"), Decoder)
    with pytest.raises(CheckpointError, match="not a minidalle 'flow_decoder' checkpoint"):
        load_flow_decoder(tmp_path / "decoder")
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_any_decoder(tmp_path / "nothing")
    meta = json.loads((tmp_path / "flow.json").read_text())
    meta["config"]["unet"]["width"] = 24
    (tmp_path / "flow.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        load_flow_decoder(tmp_path / "flow")
    weights = tmp_path / "decoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_any_decoder(tmp_path / "decoder")


# ----------------------------------------------------------------------------- pipeline and CLI
@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("checkpoints")
    clip = CLIP(CLIPConfig.tiny())
    save_clip(clip, path / "clip")
    save_prior(DiffusionPrior(PriorConfig.tiny()), path / "prior")
    decoder_config = DecoderConfig(unet=dataclasses.replace(UNetConfig.tiny(), embed_dim=clip.config.embed_dim),
                                   T=100, steps=5)
    recipe = TrainConfig(steps=4, batch_size=4, warmup=1, ema=0.9, eval_every=100, save_every=100)
    save_decoder(Decoder(decoder_config), path / "decoder", metrics={"train_config": recipe.__dict__,
                                                                     "train_seconds": 1.0})
    save_flow_decoder(FlowDecoder(FlowDecoderConfig.like(decoder_config, steps=3)), path / "flow_decoder")
    return path


def test_unclip_with_a_flow_decoder(folder):
    pipe = UnCLIP.from_pretrained(folder, decoder="flow_decoder")
    assert isinstance(pipe.decoder, FlowDecoder)
    prompts = ["a large red circle on the left", "a striped square"]
    images = pipe.generate(prompts, seed=0)
    assert images.shape == (2, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    torch.testing.assert_close(images, pipe.decoder.sample(pipe.prior_embedding(prompts, seed=0), seed=0))
    assert pipe.interpolate("a red circle", "a blue square", steps=3).shape == (3, 3, 32, 32)
    assert pipe.text_diff("a red circle", "a red circle", "a blue circle").shape == (1, 3, 32, 32)
    assert isinstance(UnCLIP.from_pretrained(folder).decoder, Decoder)


def test_cli_generate_and_train_flow_decoder(folder, tmp_path, capsys):
    out = tmp_path / "grid.png"
    assert main(["generate", "a red circle", "-o", str(out), "-n", "2", "--steps", "2", "--decoder", "flow_decoder",
                 "--checkpoints", str(folder)]) == 0
    assert out.exists()
    assert main(["train", "flow-decoder", "--checkpoints", str(folder)]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    assert main(["train", "flow-decoder", "--checkpoints", str(folder), "--force", "--threads", "1"]) == 0
    trained = load_flow_decoder(folder / "flow_decoder")
    budget = trained.metrics["budget"]
    assert budget["reference_steps"] == 4 and set(budget["seconds_per_step"]) == {"decoder", "flow_decoder"}
    assert json.loads((folder / "flow_decoder.json").read_text())["step"] == budget["steps"]["flow_decoder"]
    assert trained.config.unet == load_any_decoder(folder / "decoder").config.unet


# ----------------------------------------------------------------------------- race helpers
def test_seconds_per_step_times_one_step_at_a_time_and_budget_arithmetic(monkeypatch):
    config = TrainConfig(steps=10, batch_size=2, warmup=1)
    model = torch.nn.Linear(2, 1)
    loss_fn = lambda m, step: m(torch.ones(2, 2)).pow(2).mean()  # noqa: E731
    trainers = {"a": Trainer(torch.nn.Linear(2, 1), loss_fn, config, "a", progress=False),
                "b": Trainer(torch.nn.Linear(2, 1), loss_fn, config, "b", progress=False)}
    seconds = race.seconds_per_step(trainers, steps=4, warmup=2)
    assert set(seconds) == {"a", "b"} and all(s > 0 for s in seconds.values())
    assert trainers["a"].step == trainers["b"].step == 6
    monkeypatch.setattr(race, "seconds_per_step", lambda trainers, steps, warmup: {"a": 0.3, "b": 0.2})
    budget = race.equal_budget({"a": model, "b": model}, loss_fn, config)
    assert budget["steps"] == {"a": 10, "b": 15} and budget["reference"] == "a"
    assert model.weight.grad is None  # the models themselves were not trained


def test_judge_samples_pools_groups_and_verdicts():
    from minidalle.evaluate import evaluation_prompts, load_judge

    judge = load_judge()
    prompts, _, real = evaluation_prompts(32, seed=5)
    right = race.judge_samples(judge, real, prompts, real, resamples=20)
    assert right["all"] > 0.9 and right["frechet"] == pytest.approx(0, abs=1e-6)
    assert right["all_k"] == right["seen_all_k"] + right["heldout_all_k"] == 32
    lo, hi = right["all_ci"]
    assert lo <= right["all"] <= hi
    wrong = race.judge_samples(judge, real.flip(0), prompts, real, resamples=20)
    assert wrong["all"] < right["all"] and wrong["frechet_ci"][0] > 0
    assert race.verdict(0.9, (0.85, 0.95), 0.5, (0.4, 0.6), names=("flow", "ddim")) == "flow is better"
    assert race.verdict(1.0, (0.5, 1.5), 5.0, (4.0, 6.0), higher_is_better=False, names=("x", "y")) == "x is better"
    assert race.verdict(0.9, (0.8, 0.95), 0.85, (0.75, 0.9)) == "no difference within the intervals"
    with pytest.raises(ValueError, match="as many"):
        race.judge_samples(judge, real[:4], prompts, real)


def test_reflow_pairs_and_student():
    """The pairs are what the teacher draws from that noise; the student starts as the teacher, samples
    without guidance, and its loss on a pair uses that pair's noise (a straight line between them)."""
    from minidalle.flow_decoder import reflow_pairs
    from minidalle.train import train_reflow

    torch.manual_seed(0)
    teacher = FlowDecoder(FlowDecoderConfig.tiny()).eval()
    embeddings = torch.randn(3, 16)
    noise, images = reflow_pairs(teacher, embeddings, seed=4, batch_size=2, steps=2, guidance=2.0)
    assert noise.shape == images.shape == (3, 3, 32, 32)
    torch.testing.assert_close(images, teacher.sample(embeddings, x_T=noise, steps=2, guidance=2.0))
    config = TrainConfig(steps=2, batch_size=2, warmup=1, lr=1e-4)
    student, trainer = train_reflow(teacher, noise, images, embeddings, config, guidance=2.0, progress=False)
    assert student.config.guidance == 1.0 and student.config.drop_condition == 0.0 and trainer.step == 2
    assert trainer.metrics["reflow"] == {"pairs": 3, "teacher_guidance": 2.0}
    model = FlowDecoder(FlowDecoderConfig.tiny())
    g = torch.Generator().manual_seed(1)
    t = torch.rand(3, generator=g)
    x0 = images * 2 - 1
    x_t = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise
    want = (model.unet(x_t, 1000 * t, embeddings) - (noise - x0)).pow(2).mean()
    model.config = dataclasses.replace(model.config, drop_condition=0.0)
    torch.testing.assert_close(model.loss(images, embeddings, torch.Generator().manual_seed(1), noise=noise), want)
    with pytest.raises(ValueError, match="noise shape"):
        model.loss(images, embeddings, noise=noise[:2])
    with pytest.raises(ValueError, match="as many"):
        train_reflow(teacher, noise[:2], images, embeddings, config, guidance=2.0)
