"""New concepts (notebook 10): the default world stays exactly as it was, the extension draws and
parses the new words only when asked for, the vocabulary grows without touching old rows, and a
refinement saves, loads and validates like a checkpoint."""
import hashlib
import math

import numpy as np
import pytest
import torch

from minidalle import world
from minidalle.checkpoints import CheckpointError
from minidalle.concepts import NEW_COLORS, STAR_PINK, World, grow_vocabulary
from minidalle.tokenizer import WordTokenizer
from minidalle.world import HELDOUT, VOCABULARY, Attributes, caption, make_dataset, parse_prompt, render


def _digest(samples) -> tuple[str, str]:
    return (hashlib.sha256(samples.images.numpy().tobytes()).hexdigest()[:16],
            hashlib.sha256("|".join(samples.captions).encode()).hexdigest()[:16])


# ----------------------------------------------------------------------------- the default world is unchanged
def test_default_world_gives_the_same_data_as_before_the_extension():
    # golden digests, recorded before minidalle.concepts existed
    assert _digest(make_dataset(64, "train", seed=3, partial=True)) == ("7d792d553985ff66", "16475d14aaeaf467")
    assert _digest(make_dataset(16, "heldout", seed=5)) == ("85ca67f8d0701571", "02fa60e1d7f63f2e")
    assert VOCABULARY == ("a", "an", "small", "large", "red", "green", "blue", "yellow", "purple", "orange", "white",
                          "and", "striped", "circle", "square", "triangle", "cross", "on", "in", "the", "left",
                          "right", "top", "bottom", "center")
    assert World().vocabulary == VOCABULARY and _digest(World().make_dataset(16, "heldout", seed=5)) == \
        _digest(make_dataset(16, "heldout", seed=5))


def test_old_scenes_render_the_same_in_the_extended_world():
    scenes = world.all_scenes()[::97]
    assert torch.equal(STAR_PINK.render(scenes, seed=4), render(scenes, seed=4))


@pytest.mark.parametrize("call, needle", [
    (lambda: parse_prompt("a small pink striped star"), "unknown word 'pink'"),
    (lambda: parse_prompt("a star"), "unknown word 'star'"),
    (lambda: render([Attributes("star", "red", False, None, "small", "left")]), "cannot draw 'star'"),
    (lambda: render([Attributes("circle", "pink", False, None, "small", "left")]), "cannot draw 'pink'"),
    (lambda: WordTokenizer().encode("a pink circle"), "unknown word 'pink'"),
    (lambda: World.extended("teal"), "available: star, ring, pink"),
    (lambda: World.extended("star").parse_prompt("a pink star"), "unknown word 'pink'"),
])
def test_new_words_fail_clearly_unless_the_extension_is_asked_for(call, needle):
    with pytest.raises(ValueError, match=needle):
        call()


# ----------------------------------------------------------------------------- the extended world
def test_extended_world_parses_counts_and_keeps_the_held_out_split():
    asked = STAR_PINK.parse_prompt("a small pink and green striped star on the left")
    assert asked == Attributes("star", "pink", True, "green", "small", "left")
    scenes = STAR_PINK.all_scenes()
    assert len(scenes) == 5 * (8 + 8 * 7) * 2 * 5  # shapes x colourings x sizes x positions
    for scene in scenes[::41]:
        assert STAR_PINK.parse_prompt(caption(scene)) == scene
    assert STAR_PINK.vocabulary[:len(VOCABULARY)] == VOCABULARY  # old words first: old ids do not move
    train = STAR_PINK.make_dataset(2000, "train", seed=1)
    assert not any(a.heldout for a in train.attributes)
    assert {"star", "pink"} <= {a.shape for a in train.attributes} | {a.color for a in train.attributes}
    assert {(a.shape, a.color) for a in STAR_PINK.make_dataset(500, "heldout", seed=1).attributes} == set(HELDOUT)


def test_concept_examples_each_show_a_new_word_and_are_deterministic_and_nested():
    a, b = STAR_PINK.concept_dataset(40, seed=2), STAR_PINK.concept_dataset(40, seed=2)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert all(STAR_PINK.is_new(s) for s in a.attributes)
    shapes = [s.shape for s in a.attributes]
    assert "star" in shapes and any(s.color == "pink" for s in a.attributes) and set(shapes) - {"star"}
    for text, scene in zip(a.captions, a.attributes):  # a caption never says what the scene does not show
        said = STAR_PINK.parse_prompt(text)
        assert said.shape == scene.shape and said.color in (None, scene.color)


def _mask(shape: str, size: int = 512) -> np.ndarray:
    """A big centred shape of radius 'size / 4', drawn by the extended world's mask."""
    coords = np.arange(size, dtype=np.float64) + 0.5 - size / 2
    r = np.full((1, 1, 1), size / 4)
    return STAR_PINK.shape_mask(shape, coords[None, None, :], coords[None, :, None], r)[0] \
        if shape in STAR_PINK.shapes else World.extended("ring").shape_mask(shape, coords[None, None, :],
                                                                           coords[None, :, None], r)[0]


def test_star_and_ring_have_their_closed_form_areas_and_symmetry():
    r = 512 / 4
    star = _mask("star")
    outer, inner = 1.05 * r, 0.45 * 1.05 * r  # ten triangles: (1/2) outer inner sin(36 degrees) each
    assert star.sum() == pytest.approx(10 * 0.5 * outer * inner * math.sin(math.pi / 5), rel=0.01)
    assert np.array_equal(star, star[:, ::-1])  # mirror-symmetric about the vertical axis
    column = star[:, 256]  # through the apex (up) and the inner corner between the two lower points
    assert not column[: int(256 - outer) - 1].any() and column[int(256 - 0.9 * outer)]
    assert column[256 + int(0.4 * outer)] and not column[256 + int(0.5 * outer)]  # inner corner at 0.45
    ring = _mask("ring")
    assert ring.sum() == pytest.approx(math.pi * (r**2 - (r / 2) ** 2), rel=0.01) and not ring[256, 256]


def test_pink_is_drawn_pink():
    scene = Attributes("star", "pink", False, None, "large", "center")
    image = STAR_PINK.render([scene] * 8, seed=0)  # (8, 3, 32, 32)
    pixels = image[:, :, 14:18, 14:18].permute(1, 0, 2, 3).reshape(3, -1)  # the middle of the star
    torch.testing.assert_close(pixels.mean(dim=1), torch.tensor(NEW_COLORS["pink"]), rtol=0, atol=0.03)


# ----------------------------------------------------------------------------- growing the vocabulary
def test_tokenizer_appends_new_words_and_checks_them():
    old, new = WordTokenizer(), WordTokenizer(extra_words=("star", "pink"))
    text = "a large red and green striped circle on the left"
    assert torch.equal(old.encode(text).ids, new.encode(text).ids)
    assert new.index["star"] == len(old) and new.index["pink"] == len(old) + 1
    assert new.decode(new.encode("a pink star").ids) == ["a pink star"]
    for bad in [("circle",), ("star", "star"), ("Pink",), ("two words",)]:
        with pytest.raises(ValueError):
            WordTokenizer(extra_words=bad)


@pytest.fixture
def tiny_clip():
    from minidalle.clip import CLIP, CLIPConfig
    torch.manual_seed(0)
    return CLIP(CLIPConfig.tiny()).eval()


def test_grown_clip_keeps_old_rows_and_old_embeddings_and_starts_new_rows_at_their_category(tiny_clip):
    captions = [caption(s) for s in world.all_scenes()[::211]]
    old_rows = tiny_clip.text.token_embedding.weight.detach().clone()
    with torch.no_grad():
        before = tiny_clip.encode_text(captions)
    grow_vocabulary(tiny_clip, STAR_PINK)
    with torch.no_grad():
        assert torch.equal(tiny_clip.encode_text(captions), before)
        star, pink = tiny_clip.encode_text(["a small pink star"]), tiny_clip.encode_text(["a pink circle"])
    assert star.shape == pink.shape == (1, 16)
    emb = tiny_clip.text.token_embedding
    assert torch.equal(emb.weight, old_rows) and emb.num_embeddings == len(tiny_clip.tokenizer) == 30
    index = tiny_clip.tokenizer.index
    torch.testing.assert_close(emb.new_rows[0], old_rows[[index[s] for s in world.SHAPES]].mean(0))
    torch.testing.assert_close(emb.new_rows[1], old_rows[[index[c] for c in world.COLORS]].mean(0))
    assert tiny_clip.config.text.vocab_size == 30
    with pytest.raises(ValueError, match="already has new words"):
        grow_vocabulary(tiny_clip, STAR_PINK)


@pytest.mark.parametrize("init", ["mean", "random"])
def test_other_row_inits(tiny_clip, init):
    old_rows = tiny_clip.text.token_embedding.weight.detach().clone()
    grow_vocabulary(tiny_clip, STAR_PINK, init=init, seed=3)
    rows = tiny_clip.text.token_embedding.new_rows.detach()
    if init == "mean":
        torch.testing.assert_close(rows[0], old_rows[3:].mean(0))
        torch.testing.assert_close(rows[0], rows[1])
    else:
        assert 0.5 < rows.std() / old_rows[3:].std() < 2 and not torch.allclose(rows[0], rows[1])
