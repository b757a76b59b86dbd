"""The diffusion prior: shapes, overfitting a tiny batch, best-of-n, save/load, errors."""
import pytest
import torch
import torch.nn.functional as F

from minidalle.prior import DiffusionPrior, PriorConfig, load_prior, save_prior


def _pairs(n=8, E=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    text = F.normalize(torch.randn(n, E, generator=g), dim=-1)
    image = F.normalize(text + 0.5 * torch.randn(n, E, generator=g), dim=-1)
    return text, image


def test_forward_shape_and_unit_norm_samples():
    prior = DiffusionPrior(PriorConfig.tiny())
    text, image = _pairs()
    out = prior(torch.randn(8, 16), torch.randint(0, 100, (8,)), text)
    assert out.shape == (8, 16)
    samples = prior.sample(text, seed=0, best_of=3)
    assert samples.shape == (8, 16)
    torch.testing.assert_close(samples.norm(dim=-1), torch.ones(8))


def test_overfits_a_tiny_batch():
    torch.manual_seed(0)
    prior = DiffusionPrior(PriorConfig(embed_dim=16, width=64, layers=2, heads=2, T=100, steps=20, drop_text=0.0))
    text, image = _pairs(4)
    prior.set_statistics(image)
    optimizer = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    first = None
    for step in range(400):
        loss = prior.loss(text, image, generator=torch.Generator().manual_seed(step))
        first = first if first is not None else loss.item()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    prior.eval()
    samples = prior.sample(text, seed=1, best_of=1)
    cosine = (samples * image).sum(-1)
    baseline = (text * image).sum(-1)
    assert cosine.mean() > 0.95 and cosine.mean() > baseline.mean() + 0.05


def test_best_of_n_keeps_the_candidate_closest_to_the_text():
    prior = DiffusionPrior(PriorConfig.tiny()).eval()
    text, _ = _pairs(3)
    best = prior.sample(text, seed=5, best_of=4)
    # Re-draw the same 4 candidates per text with best_of=1 over repeated texts: same generator order.
    all_candidates = prior.sample(text.repeat_interleave(4, 0), seed=5, best_of=1).view(3, 4, -1)
    scores = (all_candidates * text[:, None]).sum(-1)
    expected = all_candidates[torch.arange(3), scores.argmax(1)]
    torch.testing.assert_close(best, expected)
    assert ((best * text).sum(-1) >= scores.max(1).values - 1e-6).all()


def test_same_seed_same_samples():
    prior = DiffusionPrior(PriorConfig.tiny()).eval()
    text, _ = _pairs(2)
    torch.testing.assert_close(prior.sample(text, seed=3), prior.sample(text, seed=3))
    assert not torch.allclose(prior.sample(text, seed=3), prior.sample(text, seed=4))


def test_guidance_one_equals_conditional():
    prior = DiffusionPrior(PriorConfig.tiny()).eval()
    text, _ = _pairs(2)
    torch.testing.assert_close(prior.sample(text, seed=0, guidance=1.0, best_of=1),
                               prior.sample(text, seed=0, best_of=1))


def test_save_load_identical(tmp_path):
    prior = DiffusionPrior(PriorConfig.tiny())
    prior.set_statistics(_pairs(16)[1])
    save_prior(prior, tmp_path / "prior")
    loaded = load_prior(tmp_path / "prior")
    text, _ = _pairs(2)
    torch.testing.assert_close(prior.eval().sample(text, seed=0), loaded.sample(text, seed=0))
    torch.testing.assert_close(loaded.std, prior.std)


def test_bad_inputs():
    prior = DiffusionPrior(PriorConfig.tiny())
    with pytest.raises(ValueError, match=r"\(B, 16\)"):
        prior.sample(torch.randn(2, 5))
    with pytest.raises(ValueError, match="best_of"):
        prior.sample(torch.randn(2, 16), best_of=0)
