"""U-Net and decoder: shapes, guidance, determinism, overfitting, checkpoints."""
import dataclasses
import json

import pytest
import torch

from minidalle.checkpoints import CheckpointError
from minidalle.decoder import Decoder, DecoderConfig, load_decoder, save_decoder
from minidalle.unet import UNet, UNetConfig, timestep_embedding


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_unet_output_shape(batch):
    unet = UNet(UNetConfig.tiny())
    x = torch.randn(batch, 3, 32, 32)
    t = torch.randint(0, 1000, (batch,))
    assert unet(x, t, torch.randn(batch, 16)).shape == (batch, 3, 32, 32)
    assert unet(x, t, None).shape == (batch, 3, 32, 32)


def test_default_unet_shape_and_size():
    unet = UNet(UNetConfig())
    assert unet(torch.randn(2, 3, 32, 32), torch.tensor([0, 999]), torch.randn(2, 64)).shape == (2, 3, 32, 32)
    assert sum(p.numel() for p in unet.parameters()) < 4_000_000  # keeps checkpoints small


def test_timestep_embedding_closed_form():
    emb = timestep_embedding(torch.tensor([0, 5]), 8)
    assert emb.shape == (2, 8)
    torch.testing.assert_close(emb[0], torch.tensor([1.0] * 4 + [0.0] * 4))
    freqs = torch.exp(-torch.log(torch.tensor(10_000.0)) * torch.arange(4) / 4)
    torch.testing.assert_close(emb[1], torch.cat([(5 * freqs).cos(), (5 * freqs).sin()]))


def test_conditioning_changes_the_output():
    torch.manual_seed(0)
    unet = UNet(UNetConfig.tiny())
    x, t = torch.randn(2, 3, 32, 32), torch.tensor([10, 10])
    a, b = unet(x, t, torch.randn(2, 16)), unet(x, t, torch.randn(2, 16))
    assert not torch.allclose(a, b)


def test_guidance_one_equals_plain_conditional():
    decoder = Decoder(DecoderConfig.tiny()).eval()
    x, t, e = torch.randn(2, 3, 32, 32), torch.tensor([3, 50]), torch.randn(2, 16)
    torch.testing.assert_close(decoder.guided(x, t, e, 1.0), decoder.unet(x, t, e))
    cond, uncond = decoder.unet(x, t, e), decoder.unet(x, t, None)
    torch.testing.assert_close(decoder.guided(x, t, e, 3.0), uncond + 3.0 * (cond - uncond), atol=1e-5, rtol=1e-4)


def test_same_seed_same_images_in_range():
    decoder = Decoder(DecoderConfig.tiny()).eval()
    e = torch.randn(2, 16)
    a, b = decoder.sample(e, seed=1, guidance=2.0), decoder.sample(e, seed=1, guidance=2.0)
    torch.testing.assert_close(a, b)
    assert a.shape == (2, 3, 32, 32) and 0 <= a.min() and a.max() <= 1
    assert not torch.allclose(a, decoder.sample(e, seed=2, guidance=2.0))


def test_decoder_overfits_a_tiny_batch():
    """Two images, two embeddings: after a short fit, sampling reproduces each image."""
    torch.manual_seed(0)
    from minidalle.world import Attributes, render

    images = render([Attributes("square", "red", False, None, "large", "left"),
                     Attributes("circle", "blue", False, None, "large", "right")], seed=0)
    embeddings = torch.eye(2, 16) * 4
    decoder = Decoder(DecoderConfig(unet=UNetConfig.tiny(), T=100, steps=10, drop_condition=0.0))
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=3e-3)
    for step in range(250):
        loss = decoder.loss(images.repeat(4, 1, 1, 1), embeddings.repeat(4, 1), torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    out = decoder.eval().sample(embeddings, seed=0)
    error = (out - images).abs().mean(dim=(1, 2, 3))
    swapped = (out - images.flip(0)).abs().mean(dim=(1, 2, 3))
    assert (error < 0.1).all() and (error < swapped / 2).all()

    # DDIM inversion (unCLIP §3.1): x_T from which eta = 0 decoding draws the images back. An image
    # the decoder can draw comes back almost exactly (measured 7e-4); a render, with its pixel noise,
    # as closely as the decoder can draw it at all (its plain sample's error).
    drawn = decoder.sample(embeddings, seed=1)
    again = decoder.sample(embeddings, x_T=decoder.invert(drawn, embeddings))
    assert (again - drawn).abs().mean() < 5e-3 < (drawn - decoder.sample(embeddings.flip(0), seed=1)).abs().mean()
    rendered_back = decoder.sample(embeddings, x_T=decoder.invert(images, embeddings))
    assert ((rendered_back - images).abs().mean(dim=(1, 2, 3)) < error + 5e-3).all()


def test_bad_embeddings_and_steps():
    decoder = Decoder(DecoderConfig.tiny())
    with pytest.raises(ValueError, match=r"2 images of shape \(N, 3, 32, 32\)"):
        decoder.invert(torch.rand(2, 3, 16, 16), torch.randn(2, 16))
    with pytest.raises(ValueError, match="steps"):
        decoder.invert(torch.rand(2, 3, 32, 32), torch.randn(2, 16), steps=0)
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        decoder.sample(torch.randn(2, 64))
    with pytest.raises(ValueError, match="steps"):
        decoder.sample(torch.randn(2, 16), steps=0)
    with pytest.raises(ValueError, match="prediction"):
        DecoderConfig(prediction="noise")


def test_save_load_identical_and_mismatch(tmp_path):
    decoder = Decoder(DecoderConfig.tiny()).eval()
    save_decoder(decoder, tmp_path / "decoder")
    e = torch.randn(1, 16)
    torch.testing.assert_close(decoder.sample(e, seed=0), load_decoder(tmp_path / "decoder").sample(e, seed=0))
    meta = json.loads((tmp_path / "decoder.json").read_text())
    meta["config"]["unet"]["width"] = 24
    (tmp_path / "decoder.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="shape"):
        load_decoder(tmp_path / "decoder")


@pytest.mark.parametrize("schedule", ["cosine", "linear", "shifted-cosine"])
def test_checkpoint_keeps_its_noise_schedule(schedule, tmp_path):
    # issue 17 moved the default to "linear"; a decoder saved with any schedule must load with its own
    # (sampling with another schedule's alpha_bar would give different images)
    from minidalle.diffusion import SCHEDULES, make_schedule
    config = dataclasses.replace(DecoderConfig.tiny(), schedule=schedule)
    save_decoder(Decoder(config), tmp_path / "decoder")
    loaded = load_decoder(tmp_path / "decoder")
    assert loaded.config.schedule == schedule
    torch.testing.assert_close(loaded.schedule.alpha_bar, make_schedule(schedule, config.T).alpha_bar)
    for other in set(SCHEDULES) - {schedule}:
        assert not torch.allclose(loaded.schedule.alpha_bar, make_schedule(other, config.T).alpha_bar)


def test_default_decoder_uses_the_linear_schedule():
    # issue 17: measured on make bench's 512 prompts (notebook 06, section 4); the tiny preset follows it
    assert DecoderConfig().schedule == DecoderConfig.tiny().schedule == "linear"


def test_truncated_checkpoint_fails_clearly(tmp_path):
    save_decoder(Decoder(DecoderConfig.tiny()), tmp_path / "decoder")
    weights = tmp_path / "decoder.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_decoder(tmp_path / "decoder")


@pytest.mark.parametrize("condition", ["image", "text"])
def test_train_decoder_conditions_on_image_or_text_embeddings(condition, tmp_path, monkeypatch):
    """condition="text" (notebook 08's ablation) feeds the same renders with CLIP text embeddings of
    random full or partial captions; "image" feeds CLIP image embeddings. Both save a loadable decoder."""
    import numpy as np

    from minidalle.clip import CLIP, CLIPConfig
    from minidalle.train import TrainConfig, train_decoder
    from minidalle.world import make_dataset, random_caption_variant

    torch.manual_seed(0)
    clip = CLIP(CLIPConfig.tiny()).eval()
    fed = []
    original = Decoder.loss
    monkeypatch.setattr(Decoder, "loss", lambda self, images, embeddings, generator=None: (
        fed.append((images, embeddings)), original(self, images, embeddings, generator))[1])
    config = TrainConfig(steps=2, batch_size=4, warmup=1, eval_every=10, save_every=10)
    model, trainer = train_decoder(clip, DecoderConfig.tiny(), config, out=tmp_path / "decoder", progress=False,
                                   condition=condition)
    batch = make_dataset(4, "train", seed=1 + 17)  # step 1's renders (seed * 1_000_003 + step + 17)
    rng = np.random.default_rng([0, 1])
    captions = [random_caption_variant(a, rng) for a in batch.attributes]
    with torch.no_grad():
        want = clip.encode_text(captions) if condition == "text" else clip.encode_image(batch.images)
    torch.testing.assert_close(fed[1][0], batch.images)
    torch.testing.assert_close(fed[1][1], want)
    if condition == "text":
        assert any(c != caption for c, caption in zip(captions, batch.captions))  # partial captions too, here
    loaded = load_decoder(tmp_path / "decoder")
    assert loaded.metrics["condition"] == condition and trainer.step == 2
    with pytest.raises(ValueError, match="condition must be"):
        train_decoder(clip, DecoderConfig.tiny(), config, condition="caption")


def test_standardize_maps_training_embeddings_to_zero_mean_unit_std():
    """UNetConfig(standardize=True) projects (e - mean) / std of the training embeddings: the same as a
    plain U-Net fed the standardized embeddings by hand, and the null embedding starts at the origin."""
    torch.manual_seed(0)
    config = UNetConfig.tiny()
    assert config.standardize  # the default since issue 17
    plain, std = UNet(dataclasses.replace(config, standardize=False)), UNet(config)
    std.load_state_dict(plain.state_dict(), strict=False)  # same weights; the statistics stay identity
    train = 0.3 + 0.02 * torch.randn(500, 16)  # unit-norm-like: a large shared mean, small spread
    std.set_embedding_stats(train)
    mean, sd = train.mean(0), train.std(0)
    x, t, e = torch.randn(3, 3, 32, 32), torch.tensor([1, 50, 99]), train[:3]
    torch.testing.assert_close(std(x, t, e), plain(x, t, (e - mean) / sd))
    torch.testing.assert_close(std(x, t, None), plain(x, t, torch.zeros(3, 16)))  # null = the mean
    standardized = (train - std.embed_mean) / std.embed_std
    torch.testing.assert_close(standardized.mean(0), torch.zeros(16), atol=1e-5, rtol=0)
    torch.testing.assert_close(standardized.std(0), torch.ones(16), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="standardize=True"):
        plain.set_embedding_stats(train)
    with pytest.raises(ValueError, match=r"\(N, 16\)"):
        std.set_embedding_stats(torch.randn(5, 8))


def test_standardized_decoder_trains_saves_and_loads(tmp_path):
    """train_decoder fills the statistics from the training stream before step 1; they are saved with
    the weights; a checkpoint without the field (saved before it existed, when False was the default)
    loads as standardize=False."""
    from minidalle.clip import CLIP, CLIPConfig
    from minidalle.train import STATS_STEP, TrainConfig, decoder_loss, train_decoder

    torch.manual_seed(0)
    clip = CLIP(CLIPConfig.tiny()).eval()
    config = DecoderConfig(unet=dataclasses.replace(UNetConfig.tiny(), standardize=True), T=100, steps=5)
    recipe = TrainConfig(steps=2, batch_size=64, warmup=1, eval_every=10, save_every=10)
    model, _ = train_decoder(clip, config, recipe, out=tmp_path / "std", progress=False)
    stream = decoder_loss(clip, recipe)
    want = torch.cat([stream.batch(32, STATS_STEP + k)[1] for k in range(32)])  # 32 batches of 64
    torch.testing.assert_close(model.unet.embed_mean, want.mean(0))
    torch.testing.assert_close(model.unet.embed_std, want.std(0))
    loaded = load_decoder(tmp_path / "std")
    assert loaded.config.unet.standardize
    torch.testing.assert_close(loaded.unet.embed_std, model.unet.embed_std)
    e = torch.randn(2, 16)
    torch.testing.assert_close(loaded.sample(e, seed=0), model.eval().sample(e, seed=0))

    old_config = DecoderConfig(unet=dataclasses.replace(UNetConfig.tiny(), standardize=False), T=100, steps=5)
    save_decoder(Decoder(old_config), tmp_path / "old")
    meta = json.loads((tmp_path / "old.json").read_text())
    del meta["config"]["unet"]["standardize"]  # as the shipped checkpoints were saved
    (tmp_path / "old.json").write_text(json.dumps(meta))
    assert not load_decoder(tmp_path / "old").config.unet.standardize


def test_min_snr_loss_is_the_weighted_per_sample_mse():
    """DecoderConfig(min_snr=gamma): the loss is the mean of Min-SNR weights times each sample's MSE,
    drawn with the same t, noise and condition dropout as the plain loss."""
    from minidalle.diffusion import min_snr_weight

    torch.manual_seed(0)
    plain = Decoder(DecoderConfig.tiny())
    weighted = Decoder(dataclasses.replace(DecoderConfig.tiny(), min_snr=5.0))
    weighted.load_state_dict(plain.state_dict())
    images, e = torch.rand(6, 3, 32, 32), torch.randn(6, 16)
    seen = {}
    original = plain.unet.forward
    plain.unet.forward = lambda x, t, c: seen.setdefault("io", (t, original(x, t, c)))[1]
    plain.loss(images, e, torch.Generator().manual_seed(3))
    t, _ = seen["io"]
    assert torch.equal(t, torch.randint(0, 100, (6,), generator=torch.Generator().manual_seed(3)))
    x0 = images * 2 - 1  # the x0 decoder's target
    per_sample = (seen["io"][1] - x0).pow(2).flatten(1).mean(1)
    want = (min_snr_weight("x0", plain.schedule, t, 5.0).float() * per_sample).mean()
    torch.testing.assert_close(weighted.loss(images, e, torch.Generator().manual_seed(3)), want)
    assert not torch.isclose(want, plain.loss(images, e, torch.Generator().manual_seed(3)))
    with pytest.raises(ValueError, match="min_snr"):
        DecoderConfig(min_snr=-1.0)
