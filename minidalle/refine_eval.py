"""Measuring a refinement (notebook 10): did the pipeline learn the new concept, and what did it forget?

New concept: fresh full captions that name a new word, drawn through the whole pipeline and read by
a judge that knows the new words (`load_judge(extended=True)`): is every new word drawn ("concept"),
and is everything else the prompt asks for right too ("all": the compositions with old attributes)?
Forgetting: the old seen and held-out prompts of `evaluate.evaluation_prompts`, before and after.
Every accuracy comes with its 95 % Wilson interval ("<key>_ci") and its count ("<key>_k").
"""
from __future__ import annotations

import dataclasses
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from minidalle.concepts import World
from minidalle.evaluate import _checks, evaluation_prompts, score_prompts, wilson_interval
from minidalle.refine import REPLAY, Recipe, prepare, refine, refine_data, save_refinement
from minidalle.world import Attributes, caption

CONCEPT_SEED = 4_000_000_007  # far from every training seed


def concept_prompts(world: World, n: int, seed: int = 0) -> tuple[list[str], list[Attributes]]:
    """n fresh full captions (and their scenes) that each name a new shape or a new main colour."""
    scenes = world.concept_scenes(n, np.random.default_rng(CONCEPT_SEED + seed))
    return [caption(s) for s in scenes], scenes


def _new_word_checks(judged: Attributes, asked: Attributes, world: World) -> dict[str, bool]:
    """{new word: drawn?} for each new word the prompt names (a shape or a main colour)."""
    checks = {}
    if asked.shape in world.new_shapes:
        checks[asked.shape] = judged.shape == asked.shape
    if asked.color in world.new_colors:
        checks[asked.color] = judged.color == asked.color
    return checks


def score_concept(judged: Sequence[Attributes], asked: Sequence[Attributes], world: World) -> dict:
    """Accuracy on new-concept prompts: "new_concept" (every new word drawn), "new_<word>" (that
    word drawn, among prompts naming it), "new_all" (every attribute right), "new_<attribute>";
    each with "_ci" (95 % Wilson) and "_k" (prompts counted); "new_n" prompts."""
    if len(judged) != len(asked) or not asked:
        raise ValueError(f"need one judged image per prompt (and at least one), got {len(judged)} and {len(asked)}")
    hits: dict[str, list[bool]] = {}
    for got, want in zip(judged, asked):
        words = _new_word_checks(got, want, world)
        if not words:
            raise ValueError(f"{caption(want)!r} names no new word of the world")
        checks = _checks(got, want)
        for key, ok in [("concept", all(words.values())), ("all", all(checks.values())), *words.items(),
                        *checks.items()]:
            hits.setdefault(key, []).append(bool(ok))
    out: dict = {"new_n": len(asked)}
    for key, values in hits.items():
        out[f"new_{key}"] = float(np.mean(values))
        out[f"new_{key}_ci"], out[f"new_{key}_k"] = wilson_interval(sum(values), len(values)), len(values)
    return out


@torch.no_grad()
def evaluate_refinement(pipe, judge, world: World, n_new: int = 96, n_old: int = 128, seed: int = 0,
                        steps: int | None = None, return_images: bool = False) -> dict:
    """New-concept scores ("new_…", score_concept) and old-prompt scores ("old_seen_…",
    "old_heldout_…", score_prompts with intervals) of a pipeline whose world knows the new words.

    steps: DDIM steps of the decoder (None: its default). With return_images, also "images":
    {"new": (n_new, 3, 32, 32), "old": (n_old, 3, 32, 32)} and "prompts".
    """
    prompts, asked = concept_prompts(world, n_new, seed)
    new_images = pipe.generate(prompts, seed=seed, steps=steps)
    results = score_concept(judge.predict(new_images), asked, world)
    old_prompts, _, _ = evaluation_prompts(n_old, seed)
    old_images = pipe.generate(old_prompts, seed=seed, steps=steps)
    old = score_prompts(judge.predict(old_images), old_prompts, intervals=True, world=world)
    results |= {f"old_{key}": value for key, value in old.items()}
    if return_images:
        results["images"] = {"new": new_images, "old": old_images}
        results["prompts"] = {"new": prompts, "old": old_prompts}
    return results


def adapter_bytes(pipe, recipe: Recipe) -> int:
    """Size on disk of what a refinement saves (weights + JSON), written to a temporary folder."""
    with tempfile.TemporaryDirectory() as folder:
        weights = save_refinement(pipe, recipe, Path(folder) / "refinement")
        return weights.stat().st_size + weights.with_suffix(".json").stat().st_size


def run_grid(recipes: Sequence[Recipe], judge, base=None, n_new: int = 96, n_old: int = 128, steps: int | None = None,
             seed: int = 0, progress: bool = True, cache: dict | None = None, replay_size: int = REPLAY) -> list[dict]:
    """Refine the pipeline at `base` (default: shipped) with each recipe and measure it.

    The first row is "before": the pipeline with the grown vocabulary and nothing trained (its
    old prompts draw exactly what the shipped pipeline draws). Stages that recipes share train once
    (refine's cache; pass one to reuse stages trained before). Each row: "label", "recipe" (dict),
    "trainable_parameters", "cpu_seconds" (training, summed over stages, shared stages counted in
    every recipe that uses them), "adapter_bytes", and evaluate_refinement's keys.
    """
    from minidalle.pipeline import UnCLIP

    if len({r.words for r in recipes}) != 1:
        raise ValueError("every recipe of a grid must teach the same words")
    world = recipes[0].world
    rows, cache = [], {} if cache is None else cache
    before = prepare(UnCLIP.from_pretrained(base), dataclasses.replace(recipes[0], stages=("text",)))
    for module in (before.clip, before.prior, before.decoder):
        module.eval()
    rows.append({"label": "before (new rows, nothing trained)", "recipe": None, "trainable_parameters": 0,
                 "cpu_seconds": 0.0, "adapter_bytes": 0}
                | evaluate_refinement(before, judge, world, n_new, n_old, seed, steps))
    data_cache: dict = {}
    for recipe in recipes:
        pipe = UnCLIP.from_pretrained(base)
        key = (recipe.words, recipe.seed)
        if key not in data_cache:  # one pool of examples and one replay bank for the whole grid
            data_cache[key] = refine_data(pipe.clip, dataclasses.replace(recipe, examples=max(
                r.examples for r in recipes)), replay_size=replay_size)
        data = _first(data_cache[key], recipe.examples)
        info = refine(pipe, recipe, data=data, cache=cache, progress=progress)
        rows.append({"label": recipe.describe(), "recipe": dataclasses.asdict(recipe),
                     "trainable_parameters": info["trainable_parameters"],
                     "cpu_seconds": round(sum(info["cpu_seconds"].values()), 1),
                     "cpu_seconds_per_stage": info["cpu_seconds"], "adapter_bytes": adapter_bytes(pipe, recipe)}
                    | evaluate_refinement(pipe, judge, world, n_new, n_old, seed, steps))
    return rows


def _first(data, n: int):
    """The refine data with only the first n examples (the pool is shared; a smaller N is a subset)."""
    from minidalle.world import Samples

    e = data.examples
    return data._replace(examples=Samples(e.images[:n], e.captions[:n], e.attributes[:n]),
                         example_embeddings=data.example_embeddings[:n])


def forgetting(before: dict, after: dict, key: str = "old_seen_all") -> float:
    """How much an old-prompt accuracy dropped (positive = forgotten)."""
    return before[key] - after[key]
