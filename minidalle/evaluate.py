"""Judging a generator: an attribute judge trained on renders, per-attribute scores against
prompts, variety, CLIP score, a Fréchet distance in the judge's feature space, and a 1-5 rubric.

Shape legend: N images, F judge feature width, V values of an attribute.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minidalle import checkpoints
from minidalle.world import COLORS, HELDOUT, POSITIONS, SHAPES, SIZES, Attributes, parse_prompt

# What the judge predicts; color2 has an extra class "none" (solid).
HEADS = {"shape": SHAPES, "color": COLORS, "striped": (False, True), "color2": COLORS + (None,),
         "size": SIZES, "position": POSITIONS}


@dataclass(frozen=True)
class JudgeConfig:
    width: int = 32

    @classmethod
    def tiny(cls) -> "JudgeConfig":
        return cls(width=8)


class AttributeJudge(nn.Module):
    """A small CNN that reads every attribute off an image; trained on renders only."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config = config
        w = config.width

        def stage(c_in, c_out, stride):
            return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.GELU())

        self.features = nn.Sequential(stage(3, w, 1), stage(w, 2 * w, 2), stage(2 * w, 4 * w, 2),
                                      stage(4 * w, 4 * w, 2))
        # Position needs where, color needs what: keep a coarse 4x4 map instead of pooling it away.
        self.project = nn.Sequential(nn.Flatten(), nn.Linear(4 * w * 16, 128), nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Linear(128, len(values)) for name, values in HEADS.items()})

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """images (N, 3, 32, 32) in [0, 1] -> judge features (N, 128) (used for the Fréchet distance)."""
        if images.dim() != 4 or tuple(images.shape[1:]) != (3, 32, 32):
            raise ValueError(f"expected images of shape (N, 3, 32, 32), got {tuple(images.shape)}")
        return self.project(self.features(images * 2 - 1))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """images -> logits per attribute, {name: (N, V)}."""
        h = self.embed(images)
        return {name: head(h) for name, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 512) -> list[Attributes]:
        """The judge's reading of each image as full Attributes."""
        out = []
        for start in range(0, len(images), batch_size):
            logits = self(images[start:start + batch_size].to(next(self.parameters()).device))
            idx = {name: v.argmax(dim=1).tolist() for name, v in logits.items()}
            for i in range(len(idx["shape"])):
                values = {name: HEADS[name][idx[name][i]] for name in HEADS}
                if not values["striped"]:
                    values["color2"] = None
                out.append(Attributes(**values))
        return out


def judge_loss(judge: AttributeJudge, images: torch.Tensor, scenes: Sequence[Attributes]) -> torch.Tensor:
    logits = judge(images)
    loss = 0.0
    for name, values in HEADS.items():
        target = torch.tensor([values.index(getattr(s, name)) for s in scenes], device=images.device)
        loss = loss + F.cross_entropy(logits[name], target)
    return loss


def save_judge(model: AttributeJudge, path, metrics: dict | None = None, step: int | None = None):
    return checkpoints.save(path, "judge", model.config, model.state_dict(), metrics, step)


def load_judge(path=None, device: str | torch.device = "cpu") -> AttributeJudge:
    """The shipped judge (data/checkpoints/judge), or one saved at `path`."""
    model, meta = checkpoints.load_module(path or "judge", "judge", JudgeConfig, AttributeJudge)
    model.metrics = meta.get("metrics", {})
    return model.to(device)


# ----------------------------------------------------------------------------- scoring
SCORED = ("shape", "color", "striped", "color2", "size", "position")


def score_prompts(predicted: Sequence[Attributes], prompts: Sequence[str]) -> dict[str, float]:
    """Per-attribute accuracy of judged images against what each prompt specifies.

    Attributes a prompt leaves open (None) are not scored. Keys: "{seen|heldout}_{attribute}"
    (accuracy, NaN when nothing was scored) and "{seen|heldout}_n" (how many prompts).
    """
    if len(predicted) != len(prompts):
        raise ValueError(f"{len(predicted)} judged images for {len(prompts)} prompts")
    hits = {(g, a): [] for g in ("seen", "heldout") for a in SCORED}
    counts = {"seen": 0, "heldout": 0}
    for pred, prompt in zip(predicted, prompts):
        asked = parse_prompt(prompt)
        group = "heldout" if (asked.shape, asked.color) in HELDOUT else "seen"
        counts[group] += 1
        for name in SCORED:
            want = getattr(asked, name)
            if want is None and not (name == "color2" and asked.striped is False):
                continue
            hits[(group, name)].append(getattr(pred, name) == want)
    out = {f"{g}_{a}": (float(np.mean(v)) if v else float("nan")) for (g, a), v in hits.items()}
    out.update({f"{g}_n": n for g, n in counts.items()})
    return out


def variety(predicted: Sequence[Attributes], attribute: str) -> float:
    """Entropy (bits) of an attribute over samples: 0 = always the same, log2(V) = uniform."""
    values = [getattr(p, attribute) for p in predicted]
    _, counts = np.unique(np.array([str(v) for v in values]), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log2(p)).sum())


def rating_1_to_5(predicted: Sequence[Attributes], prompts: Sequence[str]) -> list[int]:
    """The course's rubric: the fraction of what the prompt asks for that is right, on 1-5.

    5 = everything asked for is right; 4 = all but one detail and the shape right;
    3 = the shape right, more than one detail wrong; 2 = the shape wrong but some detail right;
    1 = nothing asked for is right.
    """
    ratings = []
    for pred, prompt in zip(predicted, prompts):
        asked = parse_prompt(prompt)
        checks = {name: getattr(pred, name) == getattr(asked, name) for name in SCORED
                  if getattr(asked, name) is not None}
        wrong = [name for name, ok in checks.items() if not ok]
        if not wrong:
            ratings.append(5)
        elif checks["shape"]:
            ratings.append(4 if len(wrong) == 1 else 3)
        else:
            ratings.append(2 if len(wrong) < len(checks) else 1)
    return ratings


def rating_agreement(person: Sequence[int], rubric: Sequence[int]) -> dict[str, float]:
    """How well a person's 1-5 ratings agree with the rubric: exact, within one, and mean gap."""
    a, b = np.asarray(person, dtype=float), np.asarray(rubric, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError("ratings must be two non-empty lists of the same length")
    return {"exact": float((a == b).mean()), "within_one": float((np.abs(a - b) <= 1).mean()),
            "mean_abs_gap": float(np.abs(a - b).mean())}


@torch.no_grad()
def clip_score(clip, images: torch.Tensor, prompts: Sequence[str]) -> float:
    """Mean cosine between CLIP's image and text embeddings, times 100 (Hessel et al. 2021, w = 1)."""
    cos = (clip.encode_image(images) * clip.encode_text(list(prompts))).sum(-1)
    return float(100 * cos.clamp(min=0).mean())


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to features a (N, F) and b (M, F) (Heusel et al. 2017)."""
    a, b = a.double(), b.double()
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    # trace sqrt(cov_a cov_b) via the eigenvalues of sqrt(cov_a) cov_b sqrt(cov_a) (symmetric PSD)
    vals, vecs = torch.linalg.eigh(cov_a)
    sqrt_a = vecs @ torch.diag(vals.clamp(min=0).sqrt()) @ vecs.T
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp(min=0).sqrt().sum()
    return float((mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * middle)


@torch.no_grad()
def judge_distance(judge: AttributeJudge, generated: torch.Tensor, real: torch.Tensor) -> float:
    """Fréchet distance between generated and real images in the judge's feature space."""
    return frechet_distance(judge.embed(generated), judge.embed(real))
