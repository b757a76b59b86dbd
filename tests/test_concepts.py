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
from minidalle.checkpoints import config_from_dict as checkpoints_config
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


# ----------------------------------------------------------------------------- refinement
@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A folder of tiny, untrained clip/prior/decoder checkpoints (a stand-in for data/checkpoints)."""
    from minidalle.clip import CLIP, CLIPConfig, save_clip
    from minidalle.decoder import Decoder, DecoderConfig, save_decoder
    from minidalle.prior import DiffusionPrior, PriorConfig, save_prior
    folder = tmp_path_factory.mktemp("base")
    torch.manual_seed(0)
    save_clip(CLIP(CLIPConfig.tiny()), folder / "clip")
    save_prior(DiffusionPrior(PriorConfig.tiny()), folder / "prior")
    save_decoder(Decoder(DecoderConfig.tiny()), folder / "decoder")
    return folder


def _refined(folder, recipe):
    from minidalle.pipeline import UnCLIP
    from minidalle.refine import refine, refine_data
    pipe = UnCLIP.from_pretrained(folder)
    data = refine_data(pipe.clip, recipe, replay_size=16, pool=16)
    return pipe, refine(pipe, recipe, data=data, progress=False)


def test_prepared_pipeline_trains_only_adapters_and_rows_and_draws_old_prompts_as_before(tiny_base):
    from minidalle.pipeline import UnCLIP
    from minidalle.refine import Recipe, prepare, trainable_state
    prompts = ["a small red circle on the left", "a blue striped square"]
    base = UnCLIP.from_pretrained(tiny_base)
    expected = base.generate(prompts, seed=0, steps=2)
    pipe = prepare(UnCLIP.from_pretrained(tiny_base), Recipe.tiny())
    torch.testing.assert_close(pipe.generate(prompts, seed=0, steps=2), expected, rtol=0, atol=0)
    names = set(trainable_state(pipe))
    assert "clip.text.token_embedding.new_rows" in names
    assert all(n.endswith(("lora_A", "lora_B", "new_rows")) for n in names)
    assert not any(n.startswith("clip.visual") for n in names)  # the image side never changes
    assert {n.split(".")[0] for n in names} == {"clip", "prior", "decoder"}
    full = prepare(UnCLIP.from_pretrained(tiny_base), Recipe(**{**Recipe.tiny().__dict__, "rank": 0,
                                                              "stages": ("text", "prior")}))
    full_names = set(trainable_state(full))
    assert "clip.text.token_embedding.weight" in full_names and "prior.out.weight" in full_names
    assert not any(n.startswith(("decoder.", "clip.visual", "clip.logit_scale")) for n in full_names)


def test_a_recipe_seeds_its_adapters_whatever_ran_before(tiny_base):
    import dataclasses

    from minidalle.pipeline import UnCLIP
    from minidalle.refine import Recipe, prepare, trainable_state

    def adapters(recipe, global_seed):
        torch.manual_seed(global_seed)  # torch's global generator must not matter
        state = trainable_state(prepare(UnCLIP.from_pretrained(tiny_base), recipe))
        return {k: v.detach().clone() for k, v in state.items() if k.endswith("lora_A")}

    first, again = adapters(Recipe.tiny(), 1), adapters(Recipe.tiny(), 2)
    assert first.keys() == again.keys() and len(first) > 0
    for name in first:
        torch.testing.assert_close(first[name], again[name], rtol=0, atol=0)
    other = adapters(dataclasses.replace(Recipe.tiny(), seed=1), 1)
    assert all(not torch.equal(first[name], other[name]) for name in first)
    # a stage's adapters do not depend on which other stages the recipe tunes (refine's cache relies on it)
    no_prior = adapters(dataclasses.replace(Recipe.tiny(), stages=("text", "decoder")), 3)
    for name in no_prior:
        torch.testing.assert_close(no_prior[name], first[name], rtol=0, atol=0)


def test_refinement_saves_only_what_changed_and_loads_back_exactly(tiny_base, tmp_path):
    from safetensors.torch import load_file

    from minidalle.refine import Recipe, load_refinement, save_refinement, trainable_state
    recipe = Recipe.tiny()
    pipe, info = _refined(tiny_base, recipe)
    assert set(info["cpu_seconds"]) == {"text", "prior", "decoder"} and info["trainable_parameters"] > 0
    weights = save_refinement(pipe, recipe, tmp_path / "refinement", metrics={"base": info["base"]})
    assert set(load_file(str(weights))) == set(trainable_state(pipe))
    with pytest.raises(FileExistsError):
        save_refinement(pipe, recipe, tmp_path / "refinement")
    loaded = load_refinement(tmp_path / "refinement", base=tiny_base)
    prompts = ["a small pink striped star on the left", "a red circle"]
    torch.testing.assert_close(loaded.generate(prompts, seed=1, steps=2), pipe.generate(prompts, seed=1, steps=2))
    assert loaded.recipe == recipe
    with pytest.raises(ValueError, match="unknown word 'ring'"):
        loaded.generate(["a ring"], steps=2)


def test_a_refinement_refuses_other_base_checkpoints_and_corrupt_files(tiny_base, tmp_path):
    import shutil

    from minidalle.decoder import Decoder, DecoderConfig, save_decoder
    from minidalle.refine import Recipe, load_refinement, save_refinement
    pipe, info = _refined(tiny_base, Recipe.tiny())
    save_refinement(pipe, Recipe.tiny(), tmp_path / "r", metrics={"base": info["base"]})
    other = tmp_path / "other"
    shutil.copytree(tiny_base, other)
    torch.manual_seed(99)
    save_decoder(Decoder(DecoderConfig.tiny()), other / "decoder")  # same shapes, other weights
    with pytest.raises(CheckpointError, match="another decoder checkpoint"):
        load_refinement(tmp_path / "r", base=other)
    (tmp_path / "r.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_refinement(tmp_path / "r", base=tiny_base)


@pytest.mark.parametrize("changes, needle", [
    ({"words": ("teal",)}, "available"),
    ({"stages": ("prior",)}, "text"),
    ({"stages": ("decoder", "text")}, "pipeline order"),
    ({"rank": -1}, "rank"),
    ({"init": "zeros"}, "init"),
    ({"examples": 0}, "examples"),
    ({"decoder_replay": 0}, "decoder_replay"),
    ({"decoder_lr": 0.0}, "decoder_lr"),
])
def test_recipe_rejects_bad_settings(changes, needle):
    from minidalle.refine import Recipe
    with pytest.raises(ValueError, match=needle):
        Recipe(**{**Recipe.tiny().__dict__, **changes})


def test_decoder_stage_mixes_its_replay_ratio_and_uses_its_own_learning_rate(tiny_base, monkeypatch):
    import dataclasses

    from minidalle import refine as refine_module
    from minidalle.pipeline import UnCLIP
    from minidalle.refine import Recipe, prepare, refine_data
    recipe = dataclasses.replace(Recipe.tiny(), decoder_batch=2, decoder_replay=3, decoder_lr=7e-3, decoder_steps=1)
    pipe = prepare(UnCLIP.from_pretrained(tiny_base), recipe)
    data = refine_data(pipe.clip, recipe, replay_size=16, pool=16)
    seen = {}

    def fake_loss(images, image_emb, generator):
        seen["images"], seen["emb"] = images.shape[0], image_emb.shape[0]
        return images.mean() * 0 + sum(p.sum() for p in pipe.decoder.parameters() if p.requires_grad) * 0

    def fake_optimize(groups, loss_fn, steps, lr, desc, progress):
        seen["lr"] = lr
        loss_fn(0)
        return [0.0]

    monkeypatch.setattr(pipe.decoder, "loss", fake_loss)
    monkeypatch.setattr(refine_module, "_optimize", fake_optimize)
    refine_module._train_decoder(pipe, data, recipe, progress=False)
    assert seen == {"images": 2 + 6, "emb": 8, "lr": 7e-3}  # 2 new + 3 x 2 replayed, at decoder_lr
    refine_module._train_decoder(pipe, data, dataclasses.replace(recipe, decoder_lr=None, replay=False), progress=False)
    assert seen == {"images": 2, "emb": 2, "lr": recipe.lr}  # no replay: the new examples only; lr: LoRA's
    # full fine-tuning moves every weight: full_lr in every stage, whatever the decoder's LoRA rate
    full = dataclasses.replace(recipe, rank=0)
    assert [full.stage_lr(s) for s in ("text", "prior", "decoder")] == [full.full_lr] * 3
    assert Recipe().stage_lr("decoder") == Recipe().decoder_lr != Recipe().stage_lr("prior") == Recipe().lr
    # the decoder's own settings belong to the decoder stage's cache key only
    other = dataclasses.replace(recipe, decoder_replay=1, decoder_lr=None)
    assert refine_module._stage_key(recipe, "decoder") != refine_module._stage_key(other, "decoder")
    assert refine_module._stage_key(recipe, "prior") == refine_module._stage_key(other, "prior")


def test_a_recipe_saved_before_the_decoder_settings_loads_with_the_old_behaviour():
    import dataclasses

    from minidalle.refine import Recipe
    old = dataclasses.asdict(Recipe())
    del old["decoder_replay"], old["decoder_lr"]
    loaded = checkpoints_config(Recipe, old)
    assert loaded.decoder_replay == 1 and loaded.decoder_lr is None
    with pytest.raises(CheckpointError, match="lacks fields"):
        checkpoints_config(Recipe, {k: v for k, v in old.items() if k != "rank"})


def test_score_concept_counts_new_words_and_compositions():
    from minidalle.refine_eval import concept_prompts, score_concept
    prompts, asked = concept_prompts(STAR_PINK, 6)
    assert all(STAR_PINK.is_new(a) for a in asked) and prompts == [caption(a) for a in asked]
    asked = [Attributes("star", "red", False, None, "small", "left"), Attributes("circle", "pink", False, None, "large", "top"),
             Attributes("star", "pink", True, "blue", "small", "center")]
    judged = [asked[0], Attributes("circle", "purple", False, None, "large", "top"),
              Attributes("star", "pink", True, "green", "small", "center")]
    s = score_concept(judged, asked, STAR_PINK)
    assert s["new_n"] == 3 and s["new_concept"] == pytest.approx(2 / 3) and s["new_all"] == pytest.approx(1 / 3)
    assert s["new_star"] == 1.0 and s["new_pink"] == 0.5 and s["new_pink_k"] == 2
    assert s["new_color2"] == 0.0 and s["new_color2_k"] == 1
    lo, hi = s["new_concept_ci"]
    assert lo < 2 / 3 < hi
    with pytest.raises(ValueError, match="names no new word"):
        score_concept([judged[0]], [Attributes("circle", "red", False, None, "small", "left")], STAR_PINK)


def test_extended_judge_config_and_the_shipped_judge():
    from minidalle.judge import AttributeJudge, ExtendedJudgeConfig, JudgeConfig, load_judge, train_judge
    config = ExtendedJudgeConfig(width=8, hidden=16, shapes=STAR_PINK.shapes, colors=STAR_PINK.colors)
    judge = AttributeJudge(config)
    assert judge.heads["shape"].out_features == 5 and judge.heads["color2"].out_features == 9
    assert AttributeJudge(JudgeConfig.tiny()).heads["shape"].out_features == 4
    with pytest.raises(ValueError, match="must be the world's"):
        train_judge(JudgeConfig.tiny(), world=STAR_PINK)
    with pytest.raises(CheckpointError, match="lacks fields"):
        load_judge("judge", extended=True)  # the shipped judge knows the old world only
    assert load_judge().values["shape"] == world.SHAPES


def test_cli_finetune_refuses_to_overwrite_then_teaches_and_generates(tiny_base, tmp_path, capsys):
    from minidalle.__main__ import main
    (tmp_path / "taken.json").write_text("{}")
    assert main(["finetune", "--concept", "star", "-o", str(tmp_path / "taken")]) == 2
    assert "already exists" in capsys.readouterr().err
    out = tmp_path / "star_pink"
    assert main(["finetune", "--concept", "star", "pink", "--examples", "4", "--steps", "1", "--checkpoints",
                 str(tiny_base), "-o", str(out), "--threads", "1"]) == 0
    assert "--refinement" in capsys.readouterr().out and out.with_suffix(".safetensors").exists()
    png = tmp_path / "star.png"
    assert main(["generate", "a small pink striped star on the left", "--refinement", str(out), "--checkpoints",
                 str(tiny_base), "-o", str(png), "--steps", "2"]) == 0 and png.exists()
    assert main(["generate", "a pink star", "--checkpoints", str(tiny_base), "-o", str(tmp_path / "no.png")]) == 2
    assert "unknown word 'pink'" in capsys.readouterr().err  # without the refinement: unknown words
