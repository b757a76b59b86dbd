"""Judging a generator: per-attribute scores against prompts, variety, CLIP score, a
Fréchet distance in the judge's feature space, and the 1-5 rubric (the judge lives in
`minidalle.judge`, the hand-rating widget in `minidalle.rating`).

Shape legend: N images, F judge feature width, V values of an attribute.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from minidalle.world import HELDOUT, Attributes, make_dataset, parse_prompt, render
from minidalle.judge import (HEADS, SCORED, AttributeJudge, JudgeConfig, attribute_accuracy,  # noqa: F401
                             judge_accuracy,
                             load_judge, save_judge, train_judge)


# ----------------------------------------------------------------------------- intervals
def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval for a proportion successes / n (Wilson 1927; Brown, Cai & DasGupta 2001).

    Unlike the textbook p +- z sqrt(p (1 - p) / n), it stays inside [0, 1] and is honest at
    p = 0 or 1 (e.g. 64 / 64 gives about (0.94, 1.0), not (1.0, 1.0)). n = 0 gives (0, 1).
    """
    if n < 0 or not 0 <= successes <= n:
        raise ValueError(f"need 0 <= successes <= n, got {successes} of {n}")
    if n == 0:
        return 0.0, 1.0
    z = _normal_quantile(0.5 + confidence / 2)
    p = successes / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, center - half), min(1.0, center + half)


def _normal_quantile(q: float) -> float:
    """The standard normal's q-quantile, by bisection on erf (no scipy needed)."""
    lo, hi = -10.0, 10.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * (1 + math.erf(mid / math.sqrt(2))) < q else (lo, mid)
    return (lo + hi) / 2


def bootstrap_interval(values: Sequence[float], statistic: Callable = np.mean, confidence: float = 0.95,
                       resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of statistic(values) (Efron 1979): resample with replacement."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"need a non-empty 1-D list of values, got shape {values.shape}")
    rng = np.random.default_rng(seed)
    draws = np.array([statistic(values[rng.integers(len(values), size=len(values))]) for _ in range(resamples)])
    alpha = (1 - confidence) / 2
    return float(np.quantile(draws, alpha)), float(np.quantile(draws, 1 - alpha))


def format_interval(value: float, interval: tuple[float, float], digits: int = 3) -> str:
    """'0.848 [0.801, 0.884]': a value and its interval, all three to the same digits."""
    lo, hi = interval
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


# ----------------------------------------------------------------------------- scoring
def _asked(predicted: Sequence[Attributes], prompts: Sequence[str], world=None) -> list[Attributes]:
    """Parse prompts (ValueError on a bad one) after checking they pair up with the judged images."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    if len(predicted) != len(prompts) or not prompts:
        raise ValueError(f"need one judged image per prompt (and at least one), got {len(predicted)} "
                         f"images for {len(prompts)} prompts")
    for p in predicted:
        if not isinstance(p, Attributes):
            raise TypeError(f"judged images must be Attributes (from AttributeJudge.predict), got {type(p).__name__}")
    return [parse_prompt(p, world=world) for p in prompts]


def _checks(pred: Attributes, asked: Attributes) -> dict[str, bool]:
    """Right or wrong for each attribute the prompt specifies; what it leaves open (None) is skipped.

    A solid prompt ("a red circle") leaves color2 None: its 'no stripes' is scored once, by striped.
    """
    return {name: getattr(pred, name) == getattr(asked, name) for name in SCORED if getattr(asked, name) is not None}


def score_prompts(predicted: Sequence[Attributes], prompts: Sequence[str], intervals: bool = False,
                  world=None) -> dict:
    """Per-attribute accuracy of judged images against what each prompt specifies.

    A prompt is "heldout" when its (shape, color) pair is in HELDOUT, else "seen". Keys:
    "{seen|heldout}_{attribute}" (accuracy, NaN when no prompt of the group asked for it),
    "{seen|heldout}_all" (every specified attribute right) and "{seen|heldout}_n" (prompts).
    With intervals, each accuracy key also gets "<key>_ci", its 95 % Wilson interval (lo, hi),
    and "<key>_k", the number of prompts it counts ((0, 1) and 0 when none asked for it).
    world: a minidalle.concepts.World for prompts with new words (notebook 10).
    """
    asked = _asked(predicted, prompts, world)
    hits = {(g, a): [] for g in ("seen", "heldout") for a in SCORED + ("all",)}
    counts = {"seen": 0, "heldout": 0}
    for pred, want in zip(predicted, asked):
        group = "heldout" if (want.shape, want.color) in HELDOUT else "seen"
        counts[group] += 1
        checks = _checks(pred, want)
        for name, ok in checks.items():
            hits[(group, name)].append(ok)
        hits[(group, "all")].append(all(checks.values()))
    out = {f"{g}_{a}": (float(np.mean(v)) if v else float("nan")) for (g, a), v in hits.items()}
    out.update({f"{g}_n": n for g, n in counts.items()})
    if intervals:
        out.update({f"{g}_{a}_ci": wilson_interval(int(sum(v)), len(v)) for (g, a), v in hits.items()})
        out.update({f"{g}_{a}_k": len(v) for (g, a), v in hits.items()})
    return out


def variety(predicted: Sequence[Attributes], attribute: str) -> float:
    """Entropy (bits) of an attribute over samples: 0 = always the same, log2(V) = V values equally often.

    Measures how a generator completes what a partial prompt leaves open (e.g. the color of
    "a circle"): a high entropy means it does not always pick the same completion.
    """
    if attribute not in HEADS:
        raise ValueError(f"unknown attribute {attribute!r}; expected one of {', '.join(HEADS)}")
    if not predicted:
        raise ValueError("variety needs at least one judged image")
    values = [str(getattr(p, attribute)) for p in predicted]
    _, counts = np.unique(np.array(values), return_counts=True)
    p = counts / counts.sum()
    return float(max(0.0, -(p * np.log2(p)).sum()))


def rating_1_to_5(predicted: Sequence[Attributes], prompts: Sequence[str]) -> list[int]:
    """The course's rubric, from the attributes each prompt specifies (open ones are not judged).

    5 = everything asked for is right; 4 = the shape right and exactly one detail wrong;
    3 = the shape right and more than one detail wrong; 2 = the shape wrong but some detail
    right; 1 = nothing asked for is right.
    """
    ratings = []
    for pred, asked in zip(predicted, _asked(predicted, prompts)):
        checks = _checks(pred, asked)
        wrong = [name for name, ok in checks.items() if not ok]
        if not wrong:
            ratings.append(5)
        elif checks["shape"]:
            ratings.append(4 if len(wrong) == 1 else 3)
        else:
            ratings.append(2 if len(wrong) < len(checks) else 1)
    return ratings


def rating_agreement(person: Sequence[int], rubric: Sequence[int]) -> dict[str, float]:
    """How well a person's 1-5 ratings agree with the rubric's: exact, within one, mean gap, n."""
    a, b = np.asarray(person, dtype=float), np.asarray(rubric, dtype=float)
    if a.ndim != 1 or a.shape != b.shape or a.size == 0:
        raise ValueError(f"ratings must be two non-empty lists of the same length, got {a.shape} and {b.shape}")
    if not np.isin(a, range(1, 6)).all() or not np.isin(b, range(1, 6)).all():
        raise ValueError("ratings must be integers from 1 to 5")
    return {"exact": float((a == b).mean()), "within_one": float((np.abs(a - b) <= 1).mean()),
            "mean_abs_gap": float(np.abs(a - b).mean()), "n": int(a.size)}


@torch.no_grad()
def clip_score(clip, images: torch.Tensor, prompts: Sequence[str], batch_size: int = 512) -> float:
    """CLIPScore: 100 * mean over pairs of max(cos(image, prompt), 0) (Hessel et al. 2021, with w = 1)."""
    if isinstance(prompts, str) or len(images) != len(prompts) or len(prompts) == 0:
        raise ValueError(f"need one prompt per image (and at least one), got {len(images)} images "
                         f"and {1 if isinstance(prompts, str) else len(prompts)} prompts")
    cos = torch.cat([(clip.encode_image(images[i:i + batch_size]) * clip.encode_text(list(prompts[i:i + batch_size])))
                     .sum(-1) for i in range(0, len(images), batch_size)])  # (N,)
    return float(100 * cos.clamp(min=0).mean())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features a (N, F) and b (M, F) (Heusel et al. 2017):

    |mu_a - mu_b|^2 + tr(C_a) + tr(C_b) - 2 tr((C_a C_b)^(1/2)), 0 for identical sets.
    """
    if not (torch.is_tensor(a) and torch.is_tensor(b)) or a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"expected features (N, F) and (M, F), got {tuple(getattr(a, 'shape', ()))} "
                         f"and {tuple(getattr(b, 'shape', ()))}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("need at least 2 samples in each set to estimate a covariance")
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))  # (F, F)
    # tr((C_a C_b)^(1/2)) = sum of sqrt eigenvalues of the symmetric PSD sqrt(C_a) C_b sqrt(C_a)
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = sqrt_a @ cov_b @ sqrt_a
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    distance = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * trace_sqrt
    return max(0.0, float(distance))  # rounding can leave -1e-12 for identical sets


@torch.no_grad()
def judge_distance(judge: AttributeJudge, generated: torch.Tensor, real: torch.Tensor,
                   batch_size: int = 512) -> float:
    """Fréchet distance between generated and real images (N, 3, 32, 32) in the judge's feature space."""
    judge.eval()

    def features(images):
        return torch.cat([judge.embed(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])

    return frechet_distance(features(generated), features(real))


# ----------------------------------------------------------------------------- the whole pipeline
def evaluation_prompts(n: int, seed: int = 0):
    """n fresh full scenes: the first n // 2 seen compositions, the rest held-out ones.

    Returns (captions, scenes, renders (n, 3, 32, 32)); seeds are far from every training seed.
    """
    seen = make_dataset(n // 2, "train", seed=2_000_000_011 + seed)
    held = make_dataset(n - n // 2, "heldout", seed=2_000_000_033 + seed)
    return seen.captions + held.captions, seen.attributes + held.attributes, torch.cat([seen.images, held.images])


@torch.no_grad()
def evaluate_pipeline(pipe, n: int = 256, seed: int = 0, judge: AttributeJudge | None = None, **generate) -> dict:
    """Generate from n fresh full prompts (half seen, half held-out compositions) and judge them.

    Returns per-attribute accuracy seen/held-out ("seen_shape", "heldout_color", ...) with their
    95 % Wilson intervals ("seen_shape_ci", ...) and counts ("seen_shape_k", ...), the
    rubric's mean rating, CLIP score of generated and of real renders, the judge-feature
    Fréchet distance to real renders of the same prompts, and the real-vs-real floor (two
    renders of the same prompts with different noise), which no generator can beat.
    """
    if n < 4:
        raise ValueError(f"n must be >= 4 (half seen, half held-out), got {n}")
    judge = load_judge() if judge is None else judge.eval()
    prompts, scenes, real = evaluation_prompts(n, seed)
    images = pipe.generate(prompts, seed=seed, **generate)
    judged = judge.predict(images)
    results: dict = {"n": n}
    results |= score_prompts(judged, prompts, intervals=True)
    ratings = np.array(rating_1_to_5(judged, prompts))
    results["seen_rating"], results["heldout_rating"] = float(ratings[:n // 2].mean()), float(ratings[n // 2:].mean())
    results["clip_score"] = clip_score(pipe.clip, images, prompts)
    results["clip_score_real"] = clip_score(pipe.clip, real, prompts)
    results["judge_distance"] = judge_distance(judge, images, real)
    results["judge_distance_floor"] = judge_distance(judge, render(scenes, seed=seed + 99), real)
    return results
