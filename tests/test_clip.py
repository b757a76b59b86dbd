"""CLIP: the contrastive loss against open_clip, its closed-form minimum, a tiny overfit run,
unit-norm embeddings, the temperature clamp, input checks and the zero-shot/retrieval helpers."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minidalle.clip import (ATTRIBUTES, CLIP, MAX_LOGIT_SCALE, CLIPConfig, contrastive_loss, retrieval_accuracy,
                            zero_shot_attributes, zero_shot_attributes_of_embeddings, zero_shot_classify)
from minidalle.train import TrainConfig, Trainer
from minidalle.world import COLORS, POSITIONS, SHAPES, SIZES, all_scenes, caption, make_dataset, render


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def tiny_clip(seed: int = 0) -> CLIP:
    torch.manual_seed(seed)
    return CLIP(CLIPConfig.tiny())


def distinct_scenes(n: int, seed: int = 0):
    """n different full scenes of the train split: (images (n, 3, 32, 32), captions)."""
    scenes = all_scenes("train")
    picked = [scenes[i] for i in np.random.default_rng(seed).choice(len(scenes), n, replace=False)]
    return render(picked, seed=seed), [caption(s) for s in picked]


# ----------------------------------------------------------------------------- the loss
@settings(max_examples=30, deadline=None)
@given(batch=st.integers(1, 24), dim=st.sampled_from([2, 8, 64]), scale=st.floats(0.5, 100.0),
       seed=st.integers(0, 2**16))
def test_contrastive_loss_matches_open_clip(batch, dim, scale, seed):
    from open_clip.loss import ClipLoss

    generator = torch.Generator().manual_seed(seed)
    image = unit(torch.randn(batch, dim, generator=generator, dtype=torch.float64))
    text = unit(torch.randn(batch, dim, generator=generator, dtype=torch.float64))
    reference = torch.as_tensor(ClipLoss()(image, text, torch.tensor(scale, dtype=torch.float64)))
    ours = contrastive_loss(image, text, torch.tensor(scale, dtype=torch.float64))
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(contrastive_loss(text, image, scale), ours)  # symmetric in the two modalities


@pytest.mark.parametrize("batch", [1, 2, 5, 16])
@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 100.0])
def test_perfect_alignment_gives_closed_form(batch, scale):
    # Identical orthonormal features: the positive logit is s, every negative is 0, so each
    # cross-entropy is -log(e^s / (e^s + (B-1))) = log(1 + (B-1) e^{-s}).
    features = torch.eye(32, dtype=torch.float64)[:batch]
    expected = math.log1p((batch - 1) * math.exp(-scale))
    # (at s = 100 the answer, ~1e-42, is below float64 rounding of logsumexp: an absolute tolerance)
    assert contrastive_loss(features, features, scale).item() == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_perfect_alignment_with_large_scale_reaches_zero_and_mismatch_does_not():
    features = torch.eye(8)
    assert contrastive_loss(features, features, MAX_LOGIT_SCALE).item() < 1e-6  # log(1 + 7 e^-100)
    shuffled = features[torch.tensor([1, 0, 2, 3, 4, 5, 6, 7])]  # two pairs swapped
    assert contrastive_loss(features, shuffled, MAX_LOGIT_SCALE).item() > 20  # 2 of 8 rows pay ~s each


def test_uniform_features_give_log_batch():
    # All similarities equal: the loss is the cross-entropy of a uniform guess, log B.
    features = unit(torch.ones(6, 4))
    assert contrastive_loss(features, features, 50.0).item() == pytest.approx(math.log(6), rel=1e-6)


# ----------------------------------------------------------------------------- the model
def test_embeddings_are_unit_norm_with_the_configured_width():
    model = tiny_clip().eval()
    images, captions = distinct_scenes(5)
    with torch.no_grad():
        image_emb, text_emb = model.encode_image(images), model.encode_text(captions)
    assert image_emb.shape == text_emb.shape == (5, CLIPConfig.tiny().embed_dim)
    torch.testing.assert_close(image_emb.norm(dim=-1), torch.ones(5))
    torch.testing.assert_close(text_emb.norm(dim=-1), torch.ones(5))
    assert model.encode_text("a circle").shape == (1, CLIPConfig.tiny().embed_dim)  # one string -> a batch of 1


def test_vit_image_encoder_gives_unit_norm_embeddings_too():
    torch.manual_seed(0)
    model = CLIP(CLIPConfig(embed_dim=16, image_encoder="vit", vision=CLIPConfig.tiny().vision,
                            text=CLIPConfig.tiny().text)).eval()
    images, _ = distinct_scenes(3)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(images).norm(dim=-1), torch.ones(3))


def test_unknown_image_encoder_is_rejected():
    with pytest.raises(ValueError, match="image_encoder must be 'cnn' or 'vit'"):
        CLIPConfig(image_encoder="resnet")


def test_initial_temperature_is_stored_as_a_log():
    model = tiny_clip()
    assert model.logit_scale.item() == pytest.approx(math.log(1 / 0.07))
    assert model.clamped_scale().item() == pytest.approx(1 / 0.07, rel=1e-6)


def test_tiny_model_overfits_a_tiny_batch():
    model = tiny_clip()
    images, captions = distinct_scenes(8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model(images, captions)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        model.after_step()
        losses.append(loss.item())
    assert losses[0] > 0.8 * math.log(8)  # starts near chance
    assert losses[-1] < 0.05 * losses[0]
    model.eval()
    with torch.no_grad():
        image_emb, text_emb = model.encode_image(images), model.encode_text(captions)
    assert retrieval_accuracy(image_emb, text_emb) == 1.0  # image -> text
    assert retrieval_accuracy(text_emb, image_emb) == 1.0  # text -> image


def test_after_step_clamps_the_logit_scale():
    model = tiny_clip()
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1000.0))
    assert model.clamped_scale().item() == pytest.approx(MAX_LOGIT_SCALE)  # clamped on use...
    model.after_step()  # ...and in place after a step
    assert model.logit_scale.exp().item() == pytest.approx(MAX_LOGIT_SCALE)


def test_trainer_keeps_the_logit_scale_at_most_100():
    model = tiny_clip()

    def loss_fn(model, step):  # pushes the scale up as hard as it can
        return -model.logit_scale * 100

    config = TrainConfig(steps=20, batch_size=1, lr=0.5, warmup=1, weight_decay=0.0, grad_clip=1e9)
    Trainer(model, loss_fn, config, "clip", progress=False).run()
    assert model.logit_scale.item() > math.log(1 / 0.07)  # it did move up...
    assert model.logit_scale.exp().item() <= MAX_LOGIT_SCALE * (1 + 1e-6)  # ...but no further than 100


def test_encode_image_rejects_wrong_shapes_clearly():
    model = tiny_clip()
    bad = [torch.rand(2, 3, 16, 16), torch.rand(3, 32, 32), torch.rand(2, 1, 32, 32), torch.rand(2, 32, 32, 3),
           np.zeros((2, 3, 32, 32), dtype=np.float32)]
    for images in bad:
        with pytest.raises(ValueError, match=r"expected images of shape \(N, 3, 32, 32\)"):
            model.encode_image(images)


def test_unknown_words_give_the_tokenizer_error():
    model = tiny_clip()
    with pytest.raises(ValueError, match="unknown word 'pink'.*knows: .*circle"):
        model.encode_text(["a red circle", "a pink circle"])


# ----------------------------------------------------------------------------- measures
def test_zero_shot_attributes_returns_valid_values():
    model = tiny_clip().eval()
    data = make_dataset(6, "all", seed=3)
    predicted = zero_shot_attributes(model, data.images, batch_size=4)  # two batches
    domains = {"shape": set(SHAPES), "color": set(COLORS), "striped": {True, False},
               "color2": set(COLORS) | {None}, "size": set(SIZES), "position": set(POSITIONS)}
    assert tuple(predicted) == ATTRIBUTES
    for name, values in predicted.items():
        assert len(values) == 6
        assert set(values) <= domains[name], name
    with torch.no_grad():  # the same reading from the embeddings alone (the prior's samples have no image)
        assert zero_shot_attributes_of_embeddings(model, model.encode_image(data.images)) == predicted


def test_zero_shot_classify_picks_the_most_similar_prompt():
    model = tiny_clip().eval()
    images, _ = distinct_scenes(4)
    prompts = {shape: f"a {shape}" for shape in SHAPES}
    labels = zero_shot_classify(model, images, prompts)
    with torch.no_grad():
        sims = model.encode_image(images) @ model.encode_text(list(prompts.values())).T
    assert labels == [SHAPES[i] for i in sims.argmax(dim=1).tolist()]


def test_retrieval_accuracy_counts_duplicate_captions_by_text():
    # Image 0's nearest text is text 1, which carries the same caption: right by text, wrong by index.
    image_emb = torch.eye(3)
    text_emb = torch.eye(3)[[1, 0, 2]]  # text 0 points where image 1 does, text 1 where image 0 does
    captions = ["a red circle", "a red circle", "a blue square"]
    assert retrieval_accuracy(image_emb, text_emb) == pytest.approx(1 / 3)
    assert retrieval_accuracy(image_emb, text_emb, captions) == 1.0
    assert retrieval_accuracy(image_emb, text_emb, ["a", "b", "c"]) == pytest.approx(1 / 3)


# ----------------------------------------------------------------------------- train_clip's options
def _captions_seen(model):
    """Record the captions of every forward call of model: (list, hook handle)."""
    seen = []
    handle = model.register_forward_hook(lambda module, args, output: seen.append(list(args[1])))
    return seen, handle


def test_one_train_clip_step_is_forward_backward_clip_adamw_clamp():
    """train_clip's step, written out: clip_batch(step), loss, zero_grad, backward, gradient
    clipping, AdamW at learning_rate(step), after_step. Same weights, same batch -> same result."""
    from minidalle.train import clip_batch, learning_rate, train_clip

    config = TrainConfig(steps=1, batch_size=6, warmup=1, eval_every=1, save_every=1)
    # float64: AdamW's first step is about lr * sign(gradient), which float32 rounding of a gradient
    # within ~1e-8 of zero could flip
    ours, theirs = tiny_clip().double(), tiny_clip().double()
    batch = clip_batch(0, config)
    optimizer = torch.optim.AdamW(ours.parameters(), lr=learning_rate(0, config), weight_decay=config.weight_decay)
    loss = ours(batch.images, batch.captions)  # float32 images: encode_image casts them to the model's dtype
    optimizer.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(ours.parameters(), config.grad_clip)
    optimizer.step()
    ours.after_step()

    losses = []
    theirs.register_forward_hook(lambda module, args, output: losses.append(output.detach()))
    trained, trainer = train_clip(config=config, model=theirs, progress=False, eval_size=0)
    assert trained is theirs and trainer.step == 1
    torch.testing.assert_close(losses[0], loss.detach())
    for (name, a), b in zip(ours.named_parameters(), theirs.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def test_a_float64_clip_takes_float32_images():
    model, images = tiny_clip().double(), distinct_scenes(3)[0]
    with torch.no_grad():
        assert model.encode_image(images).dtype == torch.float64
        torch.testing.assert_close(model.encode_image(images), model.encode_image(images.double()), rtol=0, atol=0)


def test_train_clip_respects_a_frozen_temperature():
    from minidalle.train import train_clip

    torch.manual_seed(0)
    model = CLIP(dataclasses.replace(CLIPConfig.tiny(), init_temperature=1.0))
    model.logit_scale.requires_grad_(False)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_clip(config=TrainConfig.tiny(), model=model, progress=False, eval_size=0)
    assert model.logit_scale.item() == 0.0  # log(1 / 1.0), untouched by AdamW and its weight decay
    moved = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert "logit_scale" not in moved and len(moved) == len(before) - 1  # everything else trained


def test_train_clip_partial_switch():
    from minidalle.train import train_clip
    from minidalle.world import parse_prompt

    config = TrainConfig(steps=2, batch_size=16, warmup=1, eval_every=2, save_every=2)
    for partial in (True, False):
        model = tiny_clip()
        seen, _ = _captions_seen(model)
        train_clip(config=config, model=model, partial=partial, progress=False, eval_size=0)
        captions = [c for batch in seen for c in batch]
        assert len(seen) == 2 and len(captions) == 32
        assert all(parse_prompt(c).is_full for c in captions) != partial  # partial=True mixes in partial captions


def test_train_clip_rejects_a_model_and_a_config_together():
    from minidalle.train import train_clip

    with pytest.raises(ValueError, match="either model_config .* or model"):
        train_clip(CLIPConfig.tiny(), TrainConfig.tiny(), model=tiny_clip(), progress=False, eval_size=0)
    with pytest.raises(TypeError, match="model must be a minidalle.clip.CLIP"):
        train_clip(config=TrainConfig.tiny(), model=torch.nn.Linear(2, 2), progress=False, eval_size=0)
