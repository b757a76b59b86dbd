"""The SHIPPED prior (data/checkpoints/prior) is good: golden-number checks, in seconds.

Full captions: the sampled embedding is close to the true image embedding (much closer than the
text embedding) and still names the right caption, on seen and held-out compositions.
Partial prompts: the specified attributes are kept and the open ones vary (concept completion).
"""
from collections import Counter

import pytest
import torch

from minidalle.checkpoints import paths
from minidalle.clip import ATTRIBUTES, load_clip
from minidalle.prior import load_prior
from minidalle.world import HELDOUT, all_scenes, caption, make_dataset

pytestmark = pytest.mark.skipif(not (paths("clip")[0].exists() and paths("prior")[0].exists()),
                                reason="shipped clip/prior checkpoints are missing")


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(1)
    clip, prior = load_clip(), load_prior()
    scenes = all_scenes()
    with torch.no_grad():
        caption_emb = clip.encode_text([caption(s) for s in scenes])  # (1960, E)
    return clip, prior, scenes, caption_emb


def decode(clip, scenes, caption_emb, emb):
    """Most likely value of each attribute of embeddings (N, E): softmax over all full captions, marginalized."""
    probs = (clip.clamped_scale() * emb @ caption_emb.T).softmax(dim=1)  # (N, 1960)
    out = {}
    for name in ATTRIBUTES:
        values = sorted({getattr(s, name) for s in scenes}, key=str)
        one_hot = torch.tensor([[getattr(s, name) == v for v in values] for s in scenes], dtype=probs.dtype)
        out[name] = [values[i] for i in (probs @ one_hot).argmax(dim=1).tolist()]
    return out


@pytest.mark.parametrize("split", ["train", "heldout"])
def test_full_captions_close_to_true_image_embeddings(shipped, split):
    clip, prior, scenes, caption_emb = shipped
    data = make_dataset(128, split, seed=2024)
    with torch.no_grad():
        image, text = clip.encode_image(data.images), clip.encode_text(data.captions)
        predicted = prior.sample(text, seed=0)
    assert predicted.shape == image.shape
    prior_cos, text_cos = (predicted * image).sum(-1).mean().item(), (text * image).sum(-1).mean().item()
    assert prior_cos > 0.95 and prior_cos > text_cos + 0.1, (prior_cos, text_cos)
    index = {caption(s): i for i, s in enumerate(scenes)}
    truth = torch.tensor([index[c] for c in data.captions])
    top1 = ((predicted @ caption_emb.T).argmax(1) == truth).float().mean().item()
    assert top1 > 0.85, top1


def test_partial_prompt_is_completed_with_variety(shipped):
    clip, prior, scenes, caption_emb = shipped
    with torch.no_grad():
        samples = prior.sample(clip.encode_text(["a striped triangle"]).expand(64, -1), seed=0)
    decoded = decode(clip, scenes, caption_emb, samples)
    kept = sum(s == "triangle" and st for s, st in zip(decoded["shape"], decoded["striped"])) / 64
    assert kept >= 0.9, kept
    assert len(set(decoded["color"])) >= 4 and len(set(decoded["color2"])) >= 4
    assert set(decoded["size"]) == {"small", "large"} and len(set(decoded["position"])) >= 3
    assert Counter(decoded["color"]).most_common(1)[0][1] <= 32  # no collapse onto one colour


def test_held_out_partial_prompt_keeps_what_it_says(shipped):
    clip, prior, scenes, caption_emb = shipped
    assert ("circle", "yellow") in HELDOUT
    with torch.no_grad():
        samples = prior.sample(clip.encode_text(["a yellow circle"]).expand(32, -1), seed=0)
    decoded = decode(clip, scenes, caption_emb, samples)
    kept = sum(s == "circle" and c == "yellow" for s, c in zip(decoded["shape"], decoded["color"])) / 32
    assert kept >= 0.8 and set(decoded["size"]) == {"small", "large"}, (kept, decoded["size"])
