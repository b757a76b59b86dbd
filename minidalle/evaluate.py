"""Judging a generator: an attribute judge trained on renders, per-attribute scores against
prompts, variety, CLIP score, a Fréchet distance in the judge's feature space, a 1-5 rubric,
and a small widget to rate images by hand.

Shape legend: N images, F judge feature width, V values of an attribute, w judge width.
"""
from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minidalle import checkpoints
from minidalle.train import Trainer, TrainConfig
from minidalle.world import COLORS, HELDOUT, POSITIONS, SHAPES, SIZES, Attributes, make_dataset, parse_prompt, render

# What the judge predicts; color2 has an extra class None (solid).
HEADS = {"shape": SHAPES, "color": COLORS, "striped": (False, True), "color2": COLORS + (None,),
         "size": SIZES, "position": POSITIONS}
SCORED = tuple(HEADS)


@dataclass(frozen=True)
class JudgeConfig:
    width: int = 24  # w: channels of the first stage (a multiple of 8, for GroupNorm)
    hidden: int = 128  # F: feature width shared by the heads

    @classmethod
    def tiny(cls) -> "JudgeConfig":
        return cls(width=8, hidden=32)

    def __post_init__(self):
        if self.width % 8:
            raise ValueError(f"width must be a multiple of 8 (GroupNorm groups), got {self.width}")


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.GELU())


class AttributeJudge(nn.Module):
    """A small CNN that reads every attribute off an image; trained on renders only."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.low = nn.Sequential(_stage(3, w, 1), _stage(w, 2 * w, 2))  # 32 -> 16 pixels
        self.high = nn.Sequential(_stage(2 * w, 4 * w, 2), _stage(4 * w, 4 * w, 2))  # 16 -> 4 pixels
        # Two views: a coarse 4x4 map keeps *where* (position, size, shape), and a max over the
        # 16x16 map says *whether* some pattern occurs anywhere: a thin stripe of a small shape
        # covers a few pixels only, and averaging or striding would wash its color out.
        self.project = nn.Sequential(nn.Linear(4 * w * 16 + 2 * w, config.hidden), nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Linear(config.hidden, len(v)) for name, v in HEADS.items()})

    @property
    def device(self) -> torch.device:
        return self.project[0].weight.device

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, 32, 32) in [0, 1] -> judge features (N, F) (used for the Fréchet distance)."""
        if not torch.is_tensor(images) or images.dim() != 4 or tuple(images.shape[1:]) != (3, 32, 32):
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"expected images of shape (N, 3, 32, 32) in [0, 1], got {shape}")
        low = self.low(images.to(self.device, torch.float32) * 2 - 1)  # (N, 2w, 16, 16)
        high = self.high(low)  # (N, 4w, 4, 4)
        return self.project(torch.cat([high.flatten(1), low.amax(dim=(2, 3))], dim=1))  # (N, F)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images (N, 3, 32, 32) -> logits per attribute, {name: (N, V)}."""
        h = self.embed(images)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> list[Attributes]:
        """The judge's reading of each image (N, 3, 32, 32) as full Attributes."""
        out = []
        for start in range(0, len(images), batch_size):
            logits = self(images[start:start + batch_size])
            idx = {name: v.argmax(dim=1).tolist() for name, v in logits.items()}
            for i in range(len(idx["shape"])):
                values = {name: HEADS[name][idx[name][i]] for name in HEADS}
                if not values["striped"]:
                    values["color2"] = None  # the striped head decides; color2 only names the stripe
                elif values["color2"] in (None, values["color"]):  # striped: best other color
                    order = logits["color2"][i].argsort(descending=True).tolist()
                    values["color2"] = next(HEADS["color2"][j] for j in order
                                            if HEADS["color2"][j] not in (None, values["color"]))
                out.append(Attributes(**values))
        return out


def judge_loss(judge: AttributeJudge, images: torch.Tensor, scenes: Sequence[Attributes]) -> torch.Tensor:
    """Sum over attributes of the cross-entropy of the judge's logits against the true scenes."""
    logits = judge(images)
    loss = 0.0
    for name, values in HEADS.items():
        target = torch.tensor([values.index(getattr(s, name)) for s in scenes], device=judge.device)
        loss = loss + F.cross_entropy(logits[name], target)
    return loss


def attribute_accuracy(predicted: Sequence[Attributes], truth: Sequence[Attributes]) -> dict[str, float]:
    """Fraction of images whose judged attribute equals the true one, per attribute."""
    if len(predicted) != len(truth) or not truth:
        raise ValueError(f"need as many predictions as scenes (>0), got {len(predicted)} and {len(truth)}")
    return {name: float(np.mean([getattr(p, name) == getattr(t, name) for p, t in zip(predicted, truth)]))
            for name in SCORED}


def judge_accuracy(judge: AttributeJudge, n: int = 2048, seed: int = 1_000_000_007) -> dict[str, float]:
    """Per-attribute accuracy on n fresh renders of all compositions (seed far from training seeds)."""
    data = make_dataset(n, "all", seed=seed)
    return attribute_accuracy(judge.eval().predict(data.images), data.attributes)


JUDGE_TRAIN = TrainConfig(steps=400, batch_size=128, lr=5e-3, warmup=30, eval_every=400, save_every=400)


def train_judge(config: JudgeConfig = JudgeConfig(), train: TrainConfig = JUDGE_TRAIN, out=None,
                force: bool = False, progress: bool = True, eval_size: int = 2048):
    """Train the judge on fresh renders of every composition (held-out pairs too: it must judge them).

    Each step renders a new batch of `make_dataset(..., split="all")`, so it never sees an image
    twice and never sees a generated one. out: checkpoint path (e.g. CHECKPOINT_DIR / "judge"),
    or None to keep it in memory. Returns (judge, metrics) with metrics["accuracy_<attribute>"]
    on eval_size fresh renders and metrics["train_seconds"]. Takes about a minute on one thread.
    """
    if out is not None:
        checkpoints.ensure_writable(out, force)  # fail now, not after a minute of training
    torch.manual_seed(train.seed)
    judge = AttributeJudge(config)

    def loss_fn(model, step):
        batch = make_dataset(train.batch_size, "all", seed=train.seed * 1_000_003 + step)
        return judge_loss(model, batch.images, batch.attributes)

    # No checkpointing inside the loop: a minute of training is cheaper to redo than to resume.
    trainer = Trainer(judge, loss_fn, train, "judge", progress=progress)
    judge = trainer.run()
    metrics = {f"accuracy_{k}": v for k, v in judge_accuracy(judge, eval_size).items()} if eval_size else {}
    metrics |= {"eval_size": eval_size, "train_seconds": round(trainer.seconds, 1),
                "torch_threads": torch.get_num_threads(), "train_config": train.__dict__,
                "history": trainer.history[::10]}
    if out is not None:
        save_judge(judge, out, metrics, trainer.step)
    judge.metrics = metrics
    return judge, metrics


def save_judge(model: AttributeJudge, path, metrics: dict | None = None, step: int | None = None):
    return checkpoints.save(path, "judge", model.config, model.state_dict(), metrics, step)


def load_judge(path=None, device: str | torch.device = "cpu") -> AttributeJudge:
    """The shipped judge (data/checkpoints/judge), or one saved at `path`, in eval mode."""
    model, meta = checkpoints.load_module(path or "judge", "judge", JudgeConfig, AttributeJudge)
    model.metrics = meta.get("metrics", {})
    return model.to(device)


# ----------------------------------------------------------------------------- scoring
def _asked(predicted: Sequence[Attributes], prompts: Sequence[str]) -> list[Attributes]:
    """Parse prompts (ValueError on a bad one) after checking they pair up with the judged images."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of strings, not one string")
    if len(predicted) != len(prompts) or not prompts:
        raise ValueError(f"need one judged image per prompt (and at least one), got {len(predicted)} "
                         f"images for {len(prompts)} prompts")
    for p in predicted:
        if not isinstance(p, Attributes):
            raise TypeError(f"judged images must be Attributes (from AttributeJudge.predict), got {type(p).__name__}")
    return [parse_prompt(p) for p in prompts]


def _checks(pred: Attributes, asked: Attributes) -> dict[str, bool]:
    """Right or wrong for each attribute the prompt specifies; what it leaves open (None) is skipped.

    A solid prompt ("a red circle") leaves color2 None: its 'no stripes' is scored once, by striped.
    """
    return {name: getattr(pred, name) == getattr(asked, name) for name in SCORED if getattr(asked, name) is not None}


def score_prompts(predicted: Sequence[Attributes], prompts: Sequence[str]) -> dict[str, float]:
    """Per-attribute accuracy of judged images against what each prompt specifies.

    A prompt is "heldout" when its (shape, color) pair is in HELDOUT, else "seen". Keys:
    "{seen|heldout}_{attribute}" (accuracy, NaN when no prompt of the group asked for it),
    "{seen|heldout}_all" (every specified attribute right) and "{seen|heldout}_n" (prompts).
    """
    asked = _asked(predicted, prompts)
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

    Returns per-attribute accuracy seen/held-out ("seen_shape", "heldout_color", ...), the
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
    results |= score_prompts(judged, prompts)
    ratings = np.array(rating_1_to_5(judged, prompts))
    results["seen_rating"], results["heldout_rating"] = float(ratings[:n // 2].mean()), float(ratings[n // 2:].mean())
    results["clip_score"] = clip_score(pipe.clip, images, prompts)
    results["clip_score_real"] = clip_score(pipe.clip, real, prompts)
    results["judge_distance"] = judge_distance(judge, images, real)
    results["judge_distance_floor"] = judge_distance(judge, render(scenes, seed=seed + 99), real)
    return results


# ----------------------------------------------------------------------------- rating by hand
RATING_FIELDS = ("index", "prompt", "rating")


def read_ratings(path, prompts: Sequence[str] | None = None) -> list[int]:
    """Ratings saved by Rater, ordered by image index (the last rating of an image wins).

    With prompts, checks that the file rates exactly these prompts, all of them.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no ratings at {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != RATING_FIELDS:
            raise ValueError(f"{path} is not a ratings file: expected columns {RATING_FIELDS}, got {reader.fieldnames}")
        rows = {int(r["index"]): (r["prompt"], int(r["rating"])) for r in reader}
    if any(not 1 <= rating <= 5 for _, rating in rows.values()):
        raise ValueError(f"{path} holds ratings outside 1-5")
    if prompts is not None:
        expected = dict(enumerate(prompts))
        if {i: p for i, (p, _) in rows.items()} != expected:
            raise ValueError(f"{path} rates {len(rows)} images that do not match the {len(expected)} prompts given")
    return [rows[i][1] for i in sorted(rows)]


def _png(image: torch.Tensor, scale: int = 6) -> bytes:
    from PIL import Image

    pixels = (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.repeat(scale, 0).repeat(scale, 1)).save(buffer, format="PNG")  # nearest upscale
    return buffer.getvalue()


class Rater:
    """Rate images 1-5 by hand in a notebook: one image at a time, five buttons, one CSV row per click.

    An existing file is appended to (rating resumes at the first unrated image), never
    overwritten; if_exists="refuse" raises FileExistsError instead. `display(rater.widget)`.
    """

    def __init__(self, images: torch.Tensor, prompts: Sequence[str], path, if_exists: str = "append"):
        import ipywidgets as widgets

        if if_exists not in ("append", "refuse"):
            raise ValueError(f"if_exists must be 'append' or 'refuse', not {if_exists!r}")
        if isinstance(prompts, str) or len(images) != len(prompts) or len(prompts) == 0:
            raise ValueError("need one prompt per image, and at least one image")
        self.images, self.prompts, self.path = images, list(prompts), Path(path)
        self.ratings: dict[int, int] = {}
        if self.path.exists():
            if if_exists == "refuse":
                raise FileExistsError(f"{self.path} exists; choose another path or if_exists='append'")
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                if tuple(reader.fieldnames or ()) != RATING_FIELDS:
                    raise ValueError(f"{self.path} exists and is not a ratings file; choose another path")
                self.ratings = {int(r["index"]): int(r["rating"]) for r in reader}
        self.index = next((i for i in range(len(self.prompts)) if i not in self.ratings), len(self.prompts))
        self.picture = widgets.Image(format="png", width=192, height=192)
        self.label = widgets.Label()
        self.buttons = [widgets.Button(description=str(r), layout=widgets.Layout(width="48px")) for r in range(1, 6)]
        for rating, button in enumerate(self.buttons, start=1):
            button.on_click(lambda _button, rating=rating: self.rate(rating))
        self.widget = widgets.VBox([self.label, self.picture, widgets.HBox(self.buttons)])
        self._show()

    @property
    def done(self) -> bool:
        return self.index >= len(self.prompts)

    def _show(self) -> None:
        if self.done:
            self.label.value = f"done: {len(self.ratings)} ratings in {self.path.name}"
            for button in self.buttons:
                button.disabled = True
            return
        self.picture.value = _png(self.images[self.index])
        self.label.value = f"{self.index + 1}/{len(self.prompts)}: {self.prompts[self.index]}"

    def rate(self, rating: int) -> None:
        """Record a rating for the current image (append one CSV row), then show the next unrated one."""
        if self.done:
            raise RuntimeError("every image is rated already")
        if rating not in range(1, 6):
            raise ValueError(f"a rating is an integer from 1 to 5, got {rating!r}")
        new = not self.path.exists() or os.path.getsize(self.path) == 0
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(RATING_FIELDS)
            writer.writerow([self.index, self.prompts[self.index], rating])
        self.ratings[self.index] = rating
        self.index = next((i for i in range(self.index + 1, len(self.prompts)) if i not in self.ratings),
                          len(self.prompts))
        self._show()
