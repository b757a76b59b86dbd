"""The evaluation tools: the shipped judge, the scorer, the rubric, Fréchet distance, variety,
the hand-rating widget, and the benchmark script in quick mode."""
import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from minidalle import ROOT
from minidalle.evaluate import (
    format_interval,
    frechet_distance, judge_distance, rating_1_to_5, rating_agreement, score_prompts, variety,
)
from minidalle.judge import AttributeJudge, JudgeConfig, attribute_accuracy, load_judge, save_judge, train_judge
from minidalle.rating import Rater, read_ratings
from minidalle.train import TrainConfig
from minidalle.world import POSITIONS, Attributes, make_dataset, render

RED_CIRCLE = Attributes("circle", "red", False, None, "large", "left")


@pytest.fixture(scope="module")
def judge():
    return load_judge()


# ----------------------------------------------------------------------------- the judge
def test_shipped_judge_reads_fresh_renders(judge):
    data = make_dataset(1024, "all", seed=3_000_000_019)  # training used seeds 0..steps
    accuracy = attribute_accuracy(judge.predict(data.images), data.attributes)
    assert min(accuracy.values()) >= 0.99, accuracy
    assert min(v for k, v in judge.metrics.items() if k.startswith("accuracy_")) >= 0.99


def test_judge_predictions_are_valid_scenes(judge):
    data = make_dataset(64, "heldout", seed=5)
    assert all(p.is_full for p in judge.predict(data.images))


def test_train_judge_saves_loads_and_refuses_overwrite(tmp_path):
    tiny = TrainConfig(steps=3, batch_size=8, warmup=1, eval_every=3, save_every=3)
    model, metrics = train_judge(JudgeConfig.tiny(), tiny, out=tmp_path / "judge", progress=False, eval_size=32)
    assert set(metrics) >= {"accuracy_shape", "accuracy_color2", "train_seconds"}
    loaded = load_judge(tmp_path / "judge")
    images = make_dataset(4, seed=1).images
    torch.testing.assert_close(loaded(images)["color"], model(images)["color"])
    with pytest.raises(FileExistsError):
        train_judge(JudgeConfig.tiny(), tiny, out=tmp_path / "judge", progress=False)


def test_judge_rejects_bad_images(judge):
    with pytest.raises(ValueError, match=r"\(N, 3, 32, 32\)"):
        judge.embed(torch.zeros(2, 1, 32, 32))


# ----------------------------------------------------------------------------- scoring
def test_format_interval_prints_value_and_bounds_to_the_same_digits():
    assert format_interval(0.8479, (0.80123, 0.8841)) == "0.848 [0.801, 0.884]"
    assert format_interval(0.5, (0.25, 0.75), 2) == "0.50 [0.25, 0.75]"


def test_scorer_ignores_what_the_prompt_leaves_open():
    wrong_everything_but_shape = Attributes("circle", "blue", True, "green", "small", "top")
    s = score_prompts([wrong_everything_but_shape], ["a circle"])
    assert s["seen_shape"] == 1.0 and s["seen_all"] == 1.0 and s["seen_n"] == 1 and s["heldout_n"] == 0
    for name in ("color", "striped", "color2", "size", "position"):
        assert math.isnan(s[f"seen_{name}"])
    # "red striped" leaves the stripe color open; "striped" leaves both colors open.
    pred = Attributes("square", "red", True, "green", "large", "left")
    s = score_prompts([pred, pred], ["a red striped square", "a small striped square"])
    assert s["seen_color"] == 1.0 and s["seen_striped"] == 1.0 and math.isnan(s["seen_color2"])
    assert s["seen_size"] == 0.0 and s["seen_all"] == 0.5


def test_scorer_groups_heldout_compositions():
    pred = Attributes("cross", "red", False, None, "small", "center")
    s = score_prompts([pred, RED_CIRCLE], ["a small red cross in the center", "a blue circle"])
    assert s["heldout_n"] == 1 and s["heldout_all"] == 1.0
    assert s["seen_n"] == 1 and s["seen_color"] == 0.0 and s["seen_shape"] == 1.0


def test_rubric_gives_5_to_renders_of_the_prompt_and_at_most_2_to_other_shapes(judge):
    data = make_dataset(64, "all", seed=11)
    judged = judge.predict(data.images)
    assert rating_1_to_5(judged, data.captions) == [5] * 64
    others = [Attributes("square" if a.shape != "square" else "circle", "white" if a.color != "white" else "green",
                         False, None, a.size, a.position) for a in data.attributes]
    ratings = rating_1_to_5(judge.predict(render(others, seed=3)), data.captions)
    assert max(ratings) <= 2


def test_rubric_levels():
    prompt = ["a large red circle on the left"]
    assert rating_1_to_5([RED_CIRCLE], prompt) == [5]
    assert rating_1_to_5([Attributes("circle", "red", False, None, "small", "left")], prompt) == [4]
    assert rating_1_to_5([Attributes("circle", "blue", True, "red", "small", "left")], prompt) == [3]
    assert rating_1_to_5([Attributes("square", "red", False, None, "large", "left")], prompt) == [2]
    assert rating_1_to_5([Attributes("square", "blue", True, "red", "small", "top")], prompt) == [1]


def test_variety_is_zero_for_constant_and_log2_v_for_uniform():
    assert variety([RED_CIRCLE] * 10, "color") == 0.0
    uniform = [Attributes("circle", "red", False, None, "large", p) for p in POSITIONS] * 3
    assert variety(uniform, "position") == pytest.approx(math.log2(len(POSITIONS)))
    assert variety(uniform[:2] * 2, "position") == pytest.approx(1.0)


def test_rating_agreement():
    r = rating_agreement([5, 4, 1, 3], [5, 5, 3, 3])
    assert r == {"exact": 0.5, "within_one": 0.75, "mean_abs_gap": 0.75, "n": 4}


def test_clear_errors_for_bad_inputs():
    with pytest.raises(ValueError, match="one judged image per prompt"):
        score_prompts([RED_CIRCLE], ["a circle", "a square"])
    with pytest.raises(ValueError, match="unknown word 'hexagon'"):
        score_prompts([RED_CIRCLE], ["a red hexagon"])
    with pytest.raises(TypeError, match="list of strings"):
        rating_1_to_5([RED_CIRCLE], "a circle")
    with pytest.raises(TypeError, match="Attributes"):
        score_prompts(["a circle"], ["a circle"])
    with pytest.raises(ValueError, match="unknown attribute 'colour'"):
        variety([RED_CIRCLE], "colour")
    with pytest.raises(ValueError, match="at least one"):
        variety([], "color")
    with pytest.raises(ValueError, match="1 to 5"):
        rating_agreement([0, 5], [5, 5])
    with pytest.raises(ValueError, match="same length"):
        rating_agreement([5], [5, 4])
    with pytest.raises(ValueError, match=r"\(N, F\)"):
        frechet_distance(torch.zeros(10, 3), torch.zeros(10, 4))
    with pytest.raises(ValueError, match="at least 2"):
        frechet_distance(torch.zeros(1, 3), torch.zeros(10, 3))


# ----------------------------------------------------------------------------- Fréchet distance
def whitened(n: int, f: int, seed: int) -> torch.Tensor:
    """(n, f) samples whose sample mean is exactly 0 and sample covariance exactly the identity."""
    z = torch.randn(n, f, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    z = z - z.mean(0)
    return z @ torch.linalg.inv(torch.linalg.cholesky(torch.cov(z.T))).T


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu_a, mu_b = torch.tensor([0.0, 1.0, -2.0, 0.5], dtype=torch.float64), torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    sd_a, sd_b = torch.tensor([1.0, 2.0, 0.5, 1.0], dtype=torch.float64), torch.tensor([2.0, 2.0, 1.5, 0.1], dtype=torch.float64)
    a, b = mu_a + whitened(500, 4, 0) * sd_a, mu_b + whitened(700, 4, 1) * sd_b
    # For diagonal covariances: |mu_a - mu_b|^2 + sum (sd_a - sd_b)^2.
    expected = (mu_a - mu_b).pow(2).sum() + (sd_a - sd_b).pow(2).sum()
    assert frechet_distance(a, b) == pytest.approx(float(expected), rel=1e-9)
    assert frechet_distance(b, a) == pytest.approx(float(expected), rel=1e-9)


def test_frechet_distance_general_covariance_and_identical_sets():
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(3, 3, generator=g, dtype=torch.float64)
    a = whitened(400, 3, 2) @ mix.T  # sample covariance mix mix^T
    b = whitened(400, 3, 3) * 2.0  # sample covariance 4 I: sqrt(C_a C_b) = 2 sqrt(C_a)
    eigenvalues = torch.linalg.eigvalsh(mix @ mix.T)
    expected = eigenvalues.sum() + 12.0 - 2 * 2.0 * eigenvalues.sqrt().sum()
    assert frechet_distance(a, b) == pytest.approx(float(expected), rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_judge_distance_is_small_for_renders_and_large_for_noise(judge):
    data = make_dataset(256, "all", seed=21)
    again = render(data.attributes, seed=22)
    noise = torch.rand(256, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert judge_distance(judge, again, data.images) * 10 < judge_distance(judge, noise, data.images)


# ----------------------------------------------------------------------------- hand ratings
def test_rater_writes_csv_appends_and_reads_back(tmp_path):
    images, prompts = make_dataset(3, seed=4).images, ["a red circle", "a square", "a small blue cross"]
    path = tmp_path / "ratings.csv"
    rater = Rater(images, prompts, path)
    rater.buttons[4].click()  # rate image 0 a 5 (what a click in the notebook does)
    rater.buttons[1].click()  # image 1: 2
    assert not rater.done and rater.index == 2
    with pytest.raises(ValueError):
        read_ratings(path, prompts)  # image 2 is not rated yet
    again = Rater(images, prompts, path)  # appends: picks up at the first unrated image
    assert again.index == 2
    again.buttons[2].click()
    assert again.done and all(b.disabled for b in again.buttons)
    assert read_ratings(path, prompts) == [5, 2, 3]
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["index", "prompt", "rating"] and len(rows) == 4
    assert rating_agreement(read_ratings(path), [5, 3, 3])["exact"] == pytest.approx(2 / 3)
    with pytest.raises(FileExistsError):
        Rater(images, prompts, path, if_exists="refuse")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not a ratings file"):
        Rater(images, prompts, tmp_path / "other.csv")
    with pytest.raises(ValueError, match="1 to 5"):
        Rater(images, prompts, tmp_path / "new.csv").rate(6)


def test_rater_displays_as_a_widget_with_a_readable_text_fallback(tmp_path):
    """Outside JupyterLab (GitHub, nbval) a notebook shows text/plain: one line, not the widget's PNG bytes."""
    images, prompts = make_dataset(2, seed=4).images, ["a red circle", "a square"]
    rater = Rater(images, prompts, tmp_path / "you.csv")
    bundle = rater._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    text = bundle["text/plain"]
    assert "PNG" not in text and "\\x" not in text and "\n" not in text
    assert text == "Rater: image 1 of 2, 'a red circle'; 0 of 2 rated, into you.csv. " \
                   "The image and its rating buttons show in JupyterLab."
    rater.rate(4)
    rater.rate(5)
    assert rater._repr_mimebundle_()["text/plain"] == "Rater: done, 2 of 2 rated, into you.csv"


# ----------------------------------------------------------------------------- benchmarks
@pytest.fixture(scope="module")
def tiny_checkpoints(tmp_path_factory):
    """Untrained tiny models of every stage, saved like the shipped ones."""
    from minidalle.clip import CLIP, CLIPConfig, save_clip
    from minidalle.decoder import Decoder, DecoderConfig, save_decoder
    from minidalle.flow_decoder import FlowDecoder, FlowDecoderConfig, save_flow_decoder
    from minidalle.gan import GAN, GANConfig, save_gan
    from minidalle.prior import DiffusionPrior, PriorConfig, save_prior

    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    metrics = {"train_seconds": 1.0}
    save_clip(CLIP(CLIPConfig.tiny()), folder / "clip", metrics)
    save_prior(DiffusionPrior(PriorConfig.tiny()), folder / "prior", metrics)
    save_decoder(Decoder(DecoderConfig.tiny()), folder / "decoder", metrics)
    save_judge(AttributeJudge(JudgeConfig.tiny()), folder / "judge", metrics)
    save_flow_decoder(FlowDecoder(FlowDecoderConfig.like(DecoderConfig.tiny())), folder / "flow_decoder", metrics)
    save_gan(GAN(GANConfig.tiny()), folder / "gan", metrics)
    return folder


def run_bench(out: Path, checkpoints: Path, *extra: str) -> dict:
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--threads", "1", "--out", str(out),
                    "--checkpoints", str(checkpoints), *extra], check=True, capture_output=True, timeout=300)
    return json.loads((out / "results.json").read_text())


def test_bench_quick_writes_json_and_markdown(tmp_path, tiny_checkpoints):
    results = run_bench(tmp_path, tiny_checkpoints)
    assert set(results["machine"]) >= {"cores", "torch", "torch_threads", "quick"}
    assert results["machine"]["torch_threads"] == 1
    assert list(results["sections"]) == ["render", "attention", "clip", "prior", "pipeline", "inversion", "judge",
                                          "gan", "refinement", "flow"]
    for name, section in results["sections"].items():
        if name == "refinement":  # needs judge_extended and a refinement made on these very checkpoints
            assert section["status"] == "skipped" and "judge_extended" in section["note"], section
            continue
        assert section["status"] == "ok", (name, section)
        for row in section["figures"]:
            assert set(row) >= {"figure", "value", "target", "pass", "how"}
    pipeline = {row["figure"]: row for row in results["sections"]["pipeline"]["figures"]}
    lo, hi = pipeline["text->image seen all right"]["interval"]  # accuracies carry their 95 % Wilson interval
    assert 0 <= lo <= pipeline["text->image seen all right"]["value"] <= hi <= 1
    markdown = (tmp_path / "results.md").read_text()
    assert "| section | figure | value | target | result | how it was measured |" in markdown
    assert f"[{lo:.3f}, {hi:.3f}]" in markdown and "inversion round trip" in markdown
    assert "judge training time" in markdown and "torch" in markdown
    assert "DDIM 1 steps (1 calls): all right" in markdown and "Heun 4 steps (8 calls): all right" in markdown


def test_flow_curve_judges_every_saved_step(tmp_path, tiny_checkpoints):
    from minidalle.decoder import DecoderConfig, build, save_decoder
    from minidalle.flow_decoder import FlowDecoder, FlowDecoderConfig, save_flow_decoder

    budget = {"seconds_per_step": {"decoder": 2.0, "flow_decoder": 1.0}, "reference_steps": 4}
    for step in (3, 1):  # a folder per saved step, found in step order
        save_flow_decoder(FlowDecoder(FlowDecoderConfig.like(DecoderConfig.tiny())), tmp_path / "snaps" / str(step)
                          / "flow_decoder", {"budget": budget}, step=step)
        torch.manual_seed(step)  # the diffusion decoder's rerun, saved at the same steps
        save_decoder(build(DecoderConfig.tiny()), tmp_path / "dsnaps" / str(step) / "decoder", step=step)
    (tmp_path / "snaps" / "notes").mkdir()  # not a step: ignored
    script = [sys.executable, str(ROOT / "benchmarks" / "flow.py"), "--quick", "--threads", "1", "--out", str(tmp_path),
              "--checkpoints", str(tiny_checkpoints)]
    subprocess.run(script + ["--snapshots", str(tmp_path / "snaps"), "--diffusion-snapshots", str(tmp_path / "dsnaps")],
                   check=True, capture_output=True, timeout=300)
    rows = json.loads((tmp_path / "flow_curve.json").read_text())["rows"]
    assert [(r["model"], r["step"]) for r in rows] == [("flow", 1), ("flow", 3), ("diffusion", 1), ("diffusion", 3),
                                                         ("diffusion (shipped)", 4)]
    # the tiny decoder has no history: the budget's reference steps stand for its training length
    assert rows[1]["budget_share"] == pytest.approx(3 * 0.5 / 4) and rows[3]["budget_share"] == pytest.approx(3 / 4)
    assert rows[4]["budget_share"] == 1.0
    for row in rows:
        assert 0 <= row["all_ci"][0] <= row["all"] <= row["all_ci"][1] <= 1
    markdown = (tmp_path / "flow_curve.md").read_text()
    assert "| flow | 3 |" in markdown and "| diffusion | 3 |" in markdown
    alone = subprocess.run(script + ["--diffusion-snapshots", str(tmp_path / "dsnaps")], capture_output=True, text=True)
    assert alone.returncode == 2 and "--diffusion-snapshots needs --snapshots" in alone.stderr


def test_bench_refinement_section_turns_its_rows_into_figures(monkeypatch, tmp_path):
    import importlib.util
    import types

    spec = importlib.util.spec_from_file_location("bench_run", ROOT / "benchmarks" / "run.py")
    run = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run)
    rows = [dict(figure="refinement: new concept drawn", value=0.8, target=">= 0.5", how="h"),
            dict(figure="refinement: adapter size (kB)", value=778.0, target=None, how="h", unit="kB")]
    fake = types.SimpleNamespace(missing=lambda folder: None, bench=lambda folder, quick: [dict(r) for r in rows])
    monkeypatch.setattr(run, "_bench_module", lambda name: fake)
    figures = run.bench_refinement(tmp_path, quick=True)
    assert [f["figure"] for f in figures] == [r["figure"] for r in rows]
    assert figures[0]["pass"] is True and figures[1]["pass"] is None and figures[1]["unit"] == "kB"


def test_bench_skips_sections_without_checkpoints(tmp_path):
    results = run_bench(tmp_path, tmp_path / "empty", "--only", "clip", "prior", "judge")
    for section in results["sections"].values():
        assert section["status"] == "skipped" and "missing checkpoint" in section["note"]
    assert "skipped" in (tmp_path / "results.md").read_text()


def test_bench_only_re_measures_its_sections_and_keeps_the_others(tmp_path, tiny_checkpoints):
    first = run_bench(tmp_path, tiny_checkpoints, "--only", "render", "judge")
    kept = first["sections"]["render"]
    second = run_bench(tmp_path, tiny_checkpoints, "--only", "judge", "clip")
    assert list(second["sections"]) == ["render", "clip", "judge"]  # in SECTIONS order
    assert second["sections"]["render"] == kept  # untouched, with its own date and machine
    assert second["sections"]["judge"]["ran"] == second["sections"]["clip"]["ran"]
    assert second["seconds"] == pytest.approx(sum(s["seconds"] for s in second["sections"].values()), abs=0.2)
    with pytest.raises(subprocess.CalledProcessError):  # a quick file is not mixed with full-mode sections
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--out", str(tmp_path), "--only", "render"],
                       check=True, capture_output=True, timeout=300)


# ----------------------------------------------------------------------------- intervals
def test_wilson_interval_golden_numbers():
    from minidalle.evaluate import wilson_interval

    # Brown, Cai & DasGupta (2001) / R's prop.test(correct=FALSE): 81 of 263 -> (0.2553, 0.3662)
    lo, hi = wilson_interval(81, 263)
    assert lo == pytest.approx(0.25528, abs=1e-4) and hi == pytest.approx(0.36622, abs=1e-4)
    all_lo, all_hi = wilson_interval(64, 64)  # all right is not certainty
    assert all_hi == 1.0 and all_lo == pytest.approx(0.94337, abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    lo90, hi90 = wilson_interval(81, 263, confidence=0.90)
    assert lo < lo90 < hi90 < hi  # a lower confidence gives a narrower interval
    with pytest.raises(ValueError, match="successes <= n"):
        wilson_interval(5, 4)


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_n():
    import numpy as np

    from minidalle.evaluate import bootstrap_interval

    rng = np.random.default_rng(0)
    small, large = rng.normal(1.0, 1.0, 50), rng.normal(1.0, 1.0, 2000)
    lo_s, hi_s = bootstrap_interval(small)
    lo_l, hi_l = bootstrap_interval(large)
    assert lo_s < small.mean() < hi_s and lo_l < large.mean() < hi_l
    assert (hi_l - lo_l) < (hi_s - lo_s) / 4  # width ~ 1/sqrt(n)
    # close to the normal approximation mean +- 1.96 sd/sqrt(n) for the large sample
    assert (hi_l - lo_l) == pytest.approx(2 * 1.96 * large.std() / len(large) ** 0.5, rel=0.1)
    assert bootstrap_interval(small, seed=1) == bootstrap_interval(small, seed=1)


def test_score_prompts_reports_wilson_intervals():
    from minidalle.evaluate import wilson_interval

    pred = Attributes("square", "red", True, "blue", "large", "left")
    prompts = ["a red striped square", "a small striped square", "a square"]
    assert not any(k.endswith("_ci") for k in score_prompts([pred] * 3, prompts))  # only when asked for
    s = score_prompts([pred, pred, pred], prompts, intervals=True)
    assert s["seen_size_k"] == 1 and s["seen_size"] == 0.0 and s["seen_size_ci"] == wilson_interval(0, 1)
    assert s["seen_all_k"] == 3 and s["seen_all_ci"] == wilson_interval(2, 3)
    assert s["heldout_all_k"] == 0 and s["heldout_all_ci"] == (0.0, 1.0)
