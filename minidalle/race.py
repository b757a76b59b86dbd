"""Racing generators fairly (notebook 11, benchmarks/flow.py): the same CPU seconds of training,
the same prompts and prior embeddings, the same judge, and intervals on every figure.

"Same CPU seconds" on a shared machine: wall-clock times measured at different moments are not
comparable, so the training steps of both models are timed back to back, interleaved one step
each, and a budget in seconds becomes a budget in steps. Shape legend: N images, F judge features.
"""
from __future__ import annotations

import copy
import dataclasses
import statistics
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from minidalle.evaluate import bootstrap_interval, frechet_distance, score_prompts, wilson_interval
from minidalle.judge import AttributeJudge
from minidalle.train import Trainer, TrainConfig


# ----------------------------------------------------------------------------- the budget
def seconds_per_step(trainers: dict[str, Trainer], steps: int = 20, warmup: int = 3) -> dict[str, float]:
    """Median seconds of one training step of each Trainer (what it counts in train_seconds), timed
    interleaved, one step of each in turn, so that all of them see the same machine load."""
    if steps < 1 or warmup < 0:
        raise ValueError(f"need steps >= 1 and warmup >= 0, got {steps} and {warmup}")
    times: dict[str, list[float]] = {name: [] for name in trainers}
    for i in range(warmup + steps):
        for name, trainer in trainers.items():
            before = trainer.seconds
            trainer.config = dataclasses.replace(trainer.config, steps=trainer.step + 1)  # run exactly one step
            trainer.run()
            if i >= warmup:
                times[name].append(trainer.seconds - before)
    return {name: statistics.median(values) for name, values in times.items()}


def equal_budget(models: dict[str, nn.Module], loss_fn: Callable, config: TrainConfig, steps: int = 20,
                 warmup: int = 3) -> dict:
    """Training steps that give every model the CPU seconds of config.steps steps of the first one.

    models: name -> a model with its loss (copies are timed; the models are left untouched);
    loss_fn(model, step) -> loss, as for Trainer. Returns the measured seconds per step, the
    threads, and "steps": name -> round(config.steps * s_first / s_name).
    """
    trainers = {name: Trainer(copy.deepcopy(model), loss_fn, config, name, progress=False)
                for name, model in models.items()}
    seconds = seconds_per_step(trainers, steps, warmup)
    first = next(iter(models))
    return {"reference": first, "reference_steps": config.steps, "seconds_per_step": seconds,
            "timed_steps": steps, "threads": torch.get_num_threads(),
            "steps": {name: round(config.steps * seconds[first] / s) for name, s in seconds.items()}}


# ----------------------------------------------------------------------------- judging
def _pooled(scores: dict, key: str) -> tuple[float, tuple[float, float], int]:
    """Accuracy over seen and held-out prompts together, its 95 % Wilson interval, and the count."""
    k = scores[f"seen_{key}_k"] + scores[f"heldout_{key}_k"]
    hits = sum(round(scores[f"{g}_{key}"] * scores[f"{g}_{key}_k"]) for g in ("seen", "heldout")
               if scores[f"{g}_{key}_k"])
    return (hits / k if k else float("nan")), wilson_interval(hits, k), k


@torch.no_grad()
def judge_samples(judge: AttributeJudge, images: torch.Tensor, prompts: Sequence[str], real: torch.Tensor,
                  resamples: int = 200, seed: int = 0) -> dict:
    """How well images (N, 3, S, S) show their prompts, and how far they are from real renders (N, 3, S, S).

    "all": every attribute the prompt specifies right; "color2": the stripe colour, among prompts
    that name one; both pooled over seen and held-out prompts, with "<key>_ci" (95 % Wilson) and
    "<key>_k" (prompts counted); "seen_all", "heldout_all" likewise. "frechet": Fréchet distance
    in the judge's features, "frechet_ci" a 95 % percentile bootstrap over prompts (resampling
    repeats images, which raises the distance: compare intervals with each other).
    """
    if len(images) != len(real) or len(images) != len(prompts):
        raise ValueError(f"need as many images, prompts and real renders, got {len(images)}, {len(prompts)}, "
                         f"{len(real)}")
    judge.eval()
    scores = score_prompts(judge.predict(images), list(prompts), intervals=True)
    out: dict = {"n": len(prompts)}
    for key in ("all", "color2"):
        out[key], out[f"{key}_ci"], out[f"{key}_k"] = _pooled(scores, key)
    for group in ("seen", "heldout"):
        for suffix in ("", "_ci", "_k"):
            out[f"{group}_all{suffix}"] = scores[f"{group}_all{suffix}"]
    generated, renders = judge.embed(images).double(), judge.embed(real).double()  # (N, F) each
    out["frechet"] = frechet_distance(generated, renders)

    def resampled(index: np.ndarray) -> float:
        index = torch.from_numpy(index.astype(np.int64))
        return frechet_distance(generated[index], renders[index])

    out["frechet_ci"] = bootstrap_interval(np.arange(len(prompts)), resampled, resamples=resamples, seed=seed)
    return out


def sweep(sample: Callable[[int], torch.Tensor], steps: Sequence[int], judge: AttributeJudge,
          prompts: Sequence[str], real: torch.Tensor, **judge_options) -> list[dict]:
    """judge_samples of sample(steps) (images (N, 3, S, S)) for each number of steps, with the seconds it took."""
    rows = []
    for n_steps in steps:
        start = time.perf_counter()
        images = sample(n_steps)
        seconds = time.perf_counter() - start
        rows.append({"steps": n_steps, "sample_seconds": seconds, **judge_samples(judge, images, prompts, real,
                                                                                  **judge_options)})
    return rows


def verdict(a: float, a_ci: tuple[float, float], b: float, b_ci: tuple[float, float], higher_is_better: bool = True,
            names: tuple[str, str] = ("a", "b")) -> str:
    """'<a> is better', '<b> is better' only when the two intervals do not overlap; else 'no difference ...'."""
    (a_lo, a_hi), (b_lo, b_hi) = a_ci, b_ci
    if a_lo > b_hi or a_hi < b_lo:
        a_wins = (a > b) == higher_is_better
        return f"{names[0] if a_wins else names[1]} is better"
    return "no difference within the intervals"
