"""The shapes world: determinism, the held-out split, the caption grammar, rendering."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from minidalle import world
from minidalle.world import HELDOUT, Attributes, all_scenes, caption, make_dataset, parse_prompt, render


def test_vocabulary_matches_design():
    assert world.SHAPES == ("circle", "square", "triangle", "cross")
    assert world.COLORS == ("red", "green", "blue", "yellow", "purple", "orange", "white")
    assert world.SIZES == ("small", "large")
    assert world.POSITIONS == ("left", "right", "top", "bottom", "center")
    assert HELDOUT == {("triangle", "blue"), ("circle", "yellow"), ("cross", "red")}


def test_same_seed_same_data_and_different_seed_differs():
    a, b, c = make_dataset(64, seed=7), make_dataset(64, seed=7), make_dataset(64, seed=8)
    assert torch.equal(a.images, b.images) and a.captions == b.captions and a.attributes == b.attributes
    assert not torch.equal(a.images, c.images)


def test_heldout_never_in_train_and_only_in_heldout():
    train = make_dataset(10_000, "train", seed=1, partial=True)
    assert not any(a.heldout for a in train.attributes)
    # Captions do not name a held-out pair either, even partial ones.
    parsed = [parse_prompt(c) for c in train.captions]
    assert not any((p.shape, p.color) in HELDOUT for p in parsed)
    held = make_dataset(2_000, "heldout", seed=1)
    assert all(a.heldout for a in held.attributes)
    assert {(a.shape, a.color) for a in held.attributes} == set(HELDOUT)


def test_count_of_full_captions():
    # 4 shapes x (7 solid + 7*6 striped colorings) x 2 sizes x 5 positions
    scenes = all_scenes()
    assert len(scenes) == 4 * (7 + 7 * 6) * 2 * 5 == 1960
    assert len({caption(s) for s in scenes}) == 1960
    assert len(all_scenes("heldout")) == 3 * (1 + 6) * 2 * 5
    assert len(all_scenes("train")) + len(all_scenes("heldout")) == 1960


def test_round_trip_every_full_caption():
    for scene in all_scenes():
        assert scene.is_full
        text = caption(scene)
        assert parse_prompt(text) == scene
        assert caption(parse_prompt(text)) == text


def test_example_caption():
    a = Attributes("circle", "red", True, "green", "large", "left")
    assert caption(a) == "a large red and green striped circle on the left"
    assert caption(Attributes("cross", "white", False, None, "small", "center")) == "a small white cross in the center"


@pytest.mark.parametrize("text, expected", [
    ("a striped triangle", Attributes("triangle", None, True, None, None, None)),
    ("a blue square on the left", Attributes("square", "blue", False, None, None, "left")),
    ("a small cross", Attributes("cross", None, None, None, "small", None)),
    ("red striped circle", Attributes("circle", "red", True, None, None, None)),
    ("  A  Large RED and green STRIPED circle   in the CENTER ", Attributes("circle", "red", True, "green", "large", "center")),
    ("an orange cross", Attributes("cross", "orange", False, None, None, None)),
    ("square", Attributes("square")),
])
def test_partial_prompts(text, expected):
    assert parse_prompt(text) == expected
    assert parse_prompt(caption(expected)) == expected


@pytest.mark.parametrize("text, needle", [
    ("a pink circle", "'pink'"),
    ("a red", "no shape"),
    ("a circle square", "second shape 'square'"),
    ("", "empty"),
    ("   ", "empty"),
    ("a circle red", "'red' is out of order"),
    ("a red large circle", "'large' is out of order"),
    ("a red and red striped circle", "must differ"),
    ("a red and green circle", "expected 'striped'"),
    ("a circle on the", "unexpected place"),
    ("a circle in the left", "unexpected place"),
    ("a a circle", "'a'"),
])
def test_bad_prompts_name_the_problem(text, needle):
    with pytest.raises(ValueError) as info:
        parse_prompt(text)
    message = str(info.value)
    assert needle in message
    assert "accepted words" in message and "circle" in message


def test_training_variants_are_valid_and_vary():
    rng = np.random.default_rng(0)
    scenes = world.sample_scenes(500, "train", rng)
    variants = [world.partial_variant(s, rng) for s in scenes]
    for scene, v in zip(scenes, variants):
        assert v.shape == scene.shape
        for field in ("color", "color2", "size", "position"):
            value = getattr(v, field)
            assert value is None or value == getattr(scene, field)
        if v.striped is not None:
            assert v.striped == scene.striped  # a striped object is never called solid
        assert parse_prompt(caption(v)) == v
    assert sum(v == s for v, s in zip(variants, scenes)) > 100  # some full captions
    assert sum(v.size is None for v in variants) > 100  # and some partial ones


def test_render_shape_range_dtype():
    x = render(all_scenes()[:10], seed=0)
    assert x.shape == (10, 3, 32, 32) and x.dtype == torch.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert render(all_scenes()[:3], image_size=64).shape == (3, 3, 64, 64)


def test_render_rejects_partial_scenes_and_bad_sizes():
    with pytest.raises(ValueError, match="full scenes"):
        render([Attributes("circle", "red")])
    with pytest.raises(ValueError, match="image_size"):
        render(all_scenes()[:1], image_size=7)
    with pytest.raises(ValueError, match="split"):
        make_dataset(3, split="test")


def _bands(image: torch.Tensor) -> torch.Tensor:
    """Per image row: mean color of the bright (object) pixels; (S, 3), NaN rows without object."""
    bright = image.max(dim=0).values > 0.35  # (S, S) object pixels (background ~0.08)
    rows = []
    for r in range(image.shape[1]):
        px = image[:, r][:, bright[r]]
        rows.append(px.mean(dim=1) if px.shape[1] else torch.full((3,), float("nan")))
    return torch.stack(rows)


@given(st.sampled_from(all_scenes()), st.integers(0, 2**16))
@settings(max_examples=60, deadline=None)
def test_stripes_present_exactly_when_striped(scene, seed):
    """Measured on pixels: a striped object has rows of two distinct colors, a solid one of one."""
    rows = _bands(render([scene], seed=seed)[0])
    rows = rows[~rows.isnan().any(dim=1)]
    spread = (rows - rows.median(dim=0).values).abs().max(dim=1).values  # per row distance
    if scene.striped:
        assert (spread > 0.25).sum() >= 1
        # the first color covers most rows (wide bands)
        assert (spread <= 0.25).float().mean() > 0.5
    else:
        assert (spread < 0.15).all()


def test_first_color_is_the_wide_band():
    a = Attributes("square", "red", True, "green", "large", "center")
    image = render([a] * 64, seed=3)
    red = torch.tensor(world.RGB["red"])[:, None, None]
    green = torch.tensor(world.RGB["green"])[:, None, None]
    near_red = ((image - red).abs().max(dim=1).values < 0.15).float().sum()
    near_green = ((image - green).abs().max(dim=1).values < 0.15).float().sum()
    share = near_red / (near_red + near_green)
    assert 0.55 < share < 0.8  # about two thirds
