"""The conditional GAN baseline (notebook 09): shapes and ranges, the hinge and projection
formulas on fixed numbers, spectral norm, the alternating step against the textbook two-optimizer
version, a tiny overfit run, save -> load, resume, the decoder-matched budget and bad input."""
import copy
import json
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from minidalle.checkpoints import CheckpointError, paths
from minidalle.clip import CLIP, CLIPConfig, save_clip
from minidalle.decoder import Decoder, DecoderConfig, save_decoder
from minidalle.gan import (GAN, Discriminator, GANConfig, Generator, discriminator_loss, gan_step, generator_loss,
                           load_gan, measure_budget, projection_logit, save_gan, train_gan, train_gan_like_decoder)
from minidalle.train import TrainConfig, Trainer

CONFIG = GANConfig.tiny()
E, Z = CONFIG.embed_dim, CONFIG.noise_dim


def embeddings(n, seed=0):
    return F.normalize(torch.randn(n, E, generator=torch.Generator().manual_seed(seed)), dim=-1)


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return CLIP(CLIPConfig.tiny()).eval()  # embed_dim 16, as GANConfig.tiny()


# ----------------------------------------------------------------------------- shapes and ranges
def test_shapes_and_ranges():
    torch.manual_seed(0)
    gan = GAN(CONFIG)
    images = gan.generator(torch.randn(5, Z) * 10, embeddings(5))  # large noise: tanh still bounds the output
    assert images.shape == (5, 3, 32, 32) and images.min() >= -1 and images.max() <= 1
    scores = gan.discriminator(images, embeddings(5))
    assert scores.shape == (5,) and torch.isfinite(scores).all()
    assert gan.discriminator.features(images).shape == (5, 2 * CONFIG.width)
    samples = gan.generator.sample(embeddings(5), seed=3)
    assert samples.shape == (5, 3, 32, 32) and samples.min() >= 0 and samples.max() <= 1
    assert torch.equal(samples, gan.generator.sample(embeddings(5), seed=3))  # same seed, same images
    assert not torch.equal(samples, gan.generator.sample(embeddings(5), seed=4))


def test_default_sizes_are_about_the_decoders():
    gan, decoder = GAN(GANConfig()), Decoder(DecoderConfig())
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    players = count(gan.generator) + count(gan.discriminator)
    assert 0.3 < players / count(decoder) < 1.5
    assert count(gan.generator) * 4 < 5e6  # the shipped file (float32 EMA generator) stays under 5 MB


def test_generator_blocks_are_the_decoders_film_blocks():
    from minidalle.unet import ResBlock

    blocks = [b for b in Generator(CONFIG).blocks if not isinstance(b, torch.nn.Upsample)]
    assert blocks and all(type(b) is ResBlock for b in blocks)


# ----------------------------------------------------------------------------- the formulas
def test_hinge_losses_on_fixed_numbers():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # relu(1 - real) = (0, 0.5, 2), mean 5/6; relu(1 + fake) = (0, 1, 2.5), mean 7/6
    torch.testing.assert_close(discriminator_loss(real, fake), torch.tensor(2.0))
    torch.testing.assert_close(generator_loss(fake), torch.tensor(1 / 6))
    # beyond the margin, D gets no gradient; G always does
    real.requires_grad_(True)
    discriminator_loss(real, fake).backward()
    torch.testing.assert_close(real.grad, torch.tensor([0.0, -1 / 3, -1 / 3]))


def test_projection_logit_on_fixed_numbers():
    psi, project = torch.nn.Linear(2, 1), torch.nn.Linear(3, 2, bias=False)
    with torch.no_grad():
        psi.weight.copy_(torch.tensor([[1.0, -1.0]]))
        psi.bias.fill_(0.5)
        project.weight.copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
    features = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    e = torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 1.0]])
    # psi: (1 - 2 + 0.5, 3 - 0 + 0.5) = (-0.5, 3.5); V e = ((1, 2), (0, 0)); <V e, phi> = (5, 0)
    torch.testing.assert_close(projection_logit(features, e, psi, project), torch.tensor([4.5, 3.5]))


def test_discriminator_is_psi_plus_projection_and_depends_on_the_condition():
    torch.manual_seed(0)
    D = Discriminator(CONFIG).eval()
    x, e1, e2 = torch.rand(4, 3, 32, 32) * 2 - 1, embeddings(4, 1), embeddings(4, 2)
    phi = D.features(x)
    torch.testing.assert_close(D(x, e1), D.psi(phi)[:, 0] + torch.einsum("bf,fe,be->b", phi, D.project.weight, e1))
    # the score is linear in the embedding: D(x, e1) - D(x, e2) = <V (e1 - e2), phi(x)>
    torch.testing.assert_close(D(x, e1) - D(x, e2), ((e1 - e2) @ D.project.weight.T * phi).sum(-1))


def test_spectral_norm_keeps_every_layer_at_lipschitz_one():
    torch.manual_seed(0)
    D = Discriminator(CONFIG).train()
    x, e = torch.rand(2, 3, 32, 32), embeddings(2)
    for _ in range(30):  # each training-mode forward runs one power iteration
        D(x, e)
    D.eval()
    sigmas = [torch.linalg.matrix_norm(m.weight.flatten(1), ord=2).item() for m in D.modules()
              if hasattr(m, "parametrizations")]
    assert len(sigmas) == 2 * 2 + 1 + 1 + 1 + 1  # 2 blocks x 2 convs, 1 skip, stem, psi, projection
    assert all(abs(s - 1) < 0.05 for s in sigmas), sigmas


# ----------------------------------------------------------------------------- the step
def test_gan_step_equals_two_optimizers_the_textbook_way():
    """One optimizer that skips parameters without gradients == separate optimizers for D and G."""
    torch.manual_seed(0)
    gan = GAN(CONFIG)
    ours, ref = gan, copy.deepcopy(gan)
    opt = torch.optim.Adam([{"params": list(ours.generator.parameters())},
                            {"params": list(ours.discriminator.parameters())}], lr=1e-2, betas=(0.0, 0.99))
    opt_g = torch.optim.Adam(ref.generator.parameters(), lr=1e-2, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(ref.discriminator.parameters(), lr=1e-2, betas=(0.0, 0.99))
    real, e = torch.rand(6, 3, 32, 32) * 2 - 1, embeddings(6)
    for step in range(3):
        noise = torch.randn(6, Z, generator=torch.Generator().manual_seed(step))
        losses = gan_step(ours, opt, real, e, noise)
        # reference: D on real vs G(z) (no gradient into G), then G against the updated D
        fake = ref.generator(noise, e)
        d_loss = F.relu(1 - ref.discriminator(real, e)).mean() + F.relu(1 + ref.discriminator(fake.detach(), e)).mean()
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        g_loss = -ref.discriminator(fake, e).mean()
        opt_g.zero_grad()
        g_loss.backward()
        opt_g.step()
        torch.testing.assert_close(losses, torch.stack([d_loss, g_loss]).detach())
    for (name, a), b in zip(ours.state_dict().items(), ref.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    assert all(p.requires_grad for p in ours.discriminator.parameters())  # D is trainable again afterwards


def test_ema_generator_follows_the_generator():
    torch.manual_seed(0)
    gan = GAN(replace(CONFIG, ema=0.5))
    before = [p.clone() for p in gan.generator_ema.parameters()]
    with torch.no_grad():
        for p in gan.generator.parameters():
            p.add_(1.0)
    gan.after_step()
    for b, p, q in zip(before, gan.generator_ema.parameters(), gan.generator.parameters()):
        torch.testing.assert_close(p, (b + q) / 2)


def test_tiny_overfit_learns_one_scene():
    """On one render and its embedding, D and G play to a draw at that image: G ends up drawing it."""
    from minidalle.world import Attributes, render

    torch.manual_seed(0)
    gan = GAN(replace(CONFIG, ema=0.9, image_size=16))  # 16x16 keeps the test to seconds
    target = F.avg_pool2d(render([Attributes("square", "red", False, None, "large", "center")], seed=0) * 2 - 1,
                          2)  # (1, 3, 16, 16)
    real, e = target.expand(8, -1, -1, -1), embeddings(1).expand(8, -1)
    opt = torch.optim.Adam([{"params": list(gan.generator.parameters())},
                            {"params": list(gan.discriminator.parameters())}], lr=2e-3, betas=(0.0, 0.99))
    error = lambda: (gan.generator_ema(torch.randn(8, Z), e) - real).abs().mean().item()  # noqa: E731
    start = error()
    for step in range(60):
        gan_step(gan, opt, real, e, torch.randn(8, Z))
        gan.after_step()
    assert error() < 0.35 * start, (start, error())


# ----------------------------------------------------------------------------- training, checkpoints, resume
def test_trainer_logs_both_losses_and_save_load_is_identity(tmp_path, clip):
    config = TrainConfig(steps=3, batch_size=4, warmup=1, eval_every=100, save_every=100)
    gan, trainer = train_gan(clip, CONFIG, config, out=tmp_path / "gan", progress=False)
    assert [row[0] for row in trainer.history] == [1, 2, 3] and all(len(row) == 3 for row in trainer.history)
    assert len(trainer.step_seconds) == 3
    loaded = load_gan(tmp_path / "gan")
    for name, tensor in gan.generator_ema.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    e = embeddings(3)
    assert torch.equal(loaded.sample(e, seed=1), gan.generator_ema.sample(e, seed=1))
    meta = json.loads(paths(tmp_path / "gan")[1].read_text())
    assert meta["kind"] == "gan" and meta["step"] == 3 and meta["metrics"]["history"] == trainer.history
    with pytest.raises(FileExistsError, match="already exists"):
        train_gan(clip, CONFIG, config, out=tmp_path / "gan", progress=False)


def test_resumed_gan_training_equals_straight_training(tmp_path, clip, monkeypatch):
    config = TrainConfig(steps=4, batch_size=4, warmup=1, eval_every=100, save_every=2)
    straight, straight_trainer = train_gan(clip, CONFIG, config, out=tmp_path / "straight", progress=False)

    class Interrupted(Exception):
        pass

    original_save = Trainer.save

    def save_then_stop(self):
        original_save(self)
        if self.step == 2:
            raise Interrupted

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    with pytest.raises(Interrupted):
        train_gan(clip, CONFIG, config, out=tmp_path / "resumed", progress=False)
    monkeypatch.setattr(Trainer, "save", original_save)
    resumed, trainer = train_gan(clip, CONFIG, config, out=tmp_path / "resumed", resume=True, progress=False)
    assert trainer.step == 4 and trainer.history == straight_trainer.history
    for name, tensor in straight.state_dict().items():  # both players, the EMA and spectral norm's vectors
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=0, atol=0, msg=name)


def test_judge_curve_is_recorded(tmp_path, clip):
    from minidalle.judge import AttributeJudge, JudgeConfig

    torch.manual_seed(0)
    config = TrainConfig(steps=2, batch_size=4, warmup=1, eval_every=1, save_every=100)
    _, trainer = train_gan(clip, CONFIG, config, progress=False, judge=AttributeJudge(JudgeConfig.tiny()).eval(),
                           budget={"steps": 2})
    evals = trainer.metrics["evals"]
    assert [row[0] for row in evals] == [1, 2] and all(0 <= v <= 1 for row in evals for v in row[2:])
    assert trainer.metrics["budget"] == {"steps": 2}


def test_budget_is_the_decoders_steps_times_the_measured_ratio(clip):
    torch.manual_seed(0)
    decoder = Decoder(DecoderConfig.tiny())
    decoder.metrics = {"train_config": TrainConfig(steps=1000, batch_size=4).__dict__, "train_seconds": 12.0,
                       "torch_threads": 1}
    budget = measure_budget(clip, decoder, CONFIG, TrainConfig(batch_size=4), warmup=1, steps=2, rounds=1)
    ratio = budget["decoder_seconds_per_step"] / budget["gan_seconds_per_step"]
    assert abs(budget["steps"] - 1000 * ratio) <= 1 + 1000 * 1e-4 * ratio  # rounding of the recorded times
    assert budget["timed_steps"] == 2 and budget["threads"] == 1 and budget["decoder_train_seconds"] == 12.0


def test_cli_trains_a_gan_and_refuses_to_overwrite(tmp_path, clip, capsys, monkeypatch):
    from minidalle import gan as gan_module
    from minidalle.__main__ import main

    save_clip(clip, tmp_path / "clip")
    save_decoder(Decoder(DecoderConfig.tiny()), tmp_path / "decoder")
    monkeypatch.setattr(gan_module, "GAN_TRAIN", TrainConfig(steps=2, batch_size=4, warmup=1))
    assert main(["train", "gan", "--steps", "2", "--checkpoints", str(tmp_path)]) == 0
    assert load_gan(tmp_path / "gan").config == GANConfig(embed_dim=clip.config.embed_dim)
    assert main(["train", "gan", "--steps", "2", "--checkpoints", str(tmp_path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["train", "gan", "--resume", "--checkpoints", str(tmp_path)]) == 0  # done already: no more steps


# ----------------------------------------------------------------------------- bad input
def test_bad_input_gets_clear_errors(tmp_path):
    G = Generator(CONFIG)
    with pytest.raises(ValueError, match=r"shape \(N, 16\), got \(3, 64\)"):
        G.sample(torch.randn(3, 64))
    with pytest.raises(ValueError, match=r"got str"):
        G.sample("a red circle")
    with pytest.raises(ValueError, match="multiple of 8"):
        GANConfig(width=12)
    with pytest.raises(ValueError, match="ema"):
        GANConfig(ema=1.0)
    with pytest.raises(CheckpointError, match="train gan"):
        load_gan(tmp_path / "nothing")
    save_decoder(Decoder(DecoderConfig.tiny()), tmp_path / "decoder")
    with pytest.raises(CheckpointError, match="not a minidalle 'gan' checkpoint"):
        load_gan(tmp_path / "decoder")
    save_gan(GAN(CONFIG), tmp_path / "gan")
    json_path = paths(tmp_path / "gan")[1]
    meta = json.loads(json_path.read_text())
    meta["config"]["width"] = 24  # a config that does not match the saved weights
    json_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="the model expects"):
        load_gan(tmp_path / "gan")
