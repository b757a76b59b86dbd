"""The attribute judge: a small CNN trained on renders only, that reads every attribute
off an image. It judges generated images in notebooks 06-08 and the benchmarks.

Shape legend: N images, F judge feature width, V values of an attribute, w judge width.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minidalle import checkpoints
from minidalle.train import Trainer, TrainConfig
from minidalle.world import COLORS, POSITIONS, SHAPES, SIZES, Attributes, make_dataset

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

    def heads(self) -> dict[str, tuple]:
        """What each head predicts: HEADS, the shapes world's values."""
        return HEADS


@dataclass(frozen=True)
class ExtendedJudgeConfig(JudgeConfig):
    """A judge that also reads new shapes and colours (notebook 10); saved as its own checkpoint."""

    shapes: tuple = SHAPES
    colors: tuple = COLORS

    def heads(self) -> dict[str, tuple]:
        return HEADS | {"shape": self.shapes, "color": self.colors, "color2": self.colors + (None,)}


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1), nn.GroupNorm(8, c_out), nn.GELU())


class AttributeJudge(nn.Module):
    """A small CNN that reads every attribute off an image; trained on renders only."""

    def __init__(self, config: JudgeConfig):
        super().__init__()
        self.config, self.values = config, config.heads()  # values: {attribute: its classes}
        w = config.width
        self.low = nn.Sequential(_stage(3, w, 1), _stage(w, 2 * w, 2))  # 32 -> 16 pixels
        self.high = nn.Sequential(_stage(2 * w, 4 * w, 2), _stage(4 * w, 4 * w, 2))  # 16 -> 4 pixels
        # Two views: a coarse 4x4 map keeps *where* (position, size, shape), and a max over the
        # 16x16 map says *whether* some pattern occurs anywhere: a thin stripe of a small shape
        # covers a few pixels only, and averaging or striding would wash its color out.
        self.project = nn.Sequential(nn.Linear(4 * w * 16 + 2 * w, config.hidden), nn.GELU())
        self.heads = nn.ModuleDict({name: nn.Linear(config.hidden, len(v)) for name, v in self.values.items()})

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
                values = {name: self.values[name][idx[name][i]] for name in self.values}
                if not values["striped"]:
                    values["color2"] = None  # the striped head decides; color2 only names the stripe
                elif values["color2"] in (None, values["color"]):  # striped: best other color
                    order = logits["color2"][i].argsort(descending=True).tolist()
                    values["color2"] = next(self.values["color2"][j] for j in order
                                            if self.values["color2"][j] not in (None, values["color"]))
                out.append(Attributes(**values))
        return out


def judge_loss(judge: AttributeJudge, images: torch.Tensor, scenes: Sequence[Attributes]) -> torch.Tensor:
    """Sum over attributes of the cross-entropy of the judge's logits against the true scenes."""
    logits = judge(images)
    loss = 0.0
    for name, values in judge.values.items():
        target = torch.tensor([values.index(getattr(s, name)) for s in scenes], device=judge.device)
        loss = loss + F.cross_entropy(logits[name], target)
    return loss


def attribute_accuracy(predicted: Sequence[Attributes], truth: Sequence[Attributes]) -> dict[str, float]:
    """Fraction of images whose judged attribute equals the true one, per attribute."""
    if len(predicted) != len(truth) or not truth:
        raise ValueError(f"need as many predictions as scenes (>0), got {len(predicted)} and {len(truth)}")
    return {name: float(np.mean([getattr(p, name) == getattr(t, name) for p, t in zip(predicted, truth)]))
            for name in SCORED}


def judge_accuracy(judge: AttributeJudge, n: int = 2048, seed: int = 1_000_000_007, world=None) -> dict[str, float]:
    """Per-attribute accuracy on n fresh renders of all compositions (seed far from training seeds);
    world: a minidalle.concepts.World to include its new shapes and colours."""
    data = make_dataset(n, "all", seed=seed, world=world)
    return attribute_accuracy(judge.eval().predict(data.images), data.attributes)


JUDGE_TRAIN = TrainConfig(steps=400, batch_size=128, lr=5e-3, warmup=30, eval_every=400, save_every=400)
JUDGE_EXTENDED_TRAIN = TrainConfig(steps=600, batch_size=128, lr=5e-3, warmup=30, eval_every=600, save_every=600)


def train_judge(config: JudgeConfig = JudgeConfig(), train: TrainConfig = JUDGE_TRAIN, out=None,
                force: bool = False, progress: bool = True, eval_size: int = 2048,
                device: str | torch.device = "cpu", world=None):
    """Train the judge on fresh renders of every composition (held-out pairs too: it must judge them).

    Each step renders a new batch of `make_dataset(..., split="all")`, so it never sees an image
    twice and never sees a generated one. out: checkpoint path (e.g. CHECKPOINT_DIR / "judge"),
    or None to keep it in memory. Returns (judge, metrics) with metrics["accuracy_<attribute>"]
    on eval_size fresh renders and metrics["train_seconds"]. Takes about a minute on one thread.
    world: a minidalle.concepts.World (with an ExtendedJudgeConfig of its shapes and colours) to
    judge new concepts too.
    """
    wanted = (SHAPES, COLORS) if world is None else (world.shapes, world.colors)
    if (config.heads()["shape"], config.heads()["color"]) != wanted:
        raise ValueError(f"the judge's shapes and colours {config.heads()['shape']}, {config.heads()['color']} "
                         f"must be the world's {wanted} (use ExtendedJudgeConfig for an extended world)")
    if out is not None:
        checkpoints.ensure_writable(out, force)  # fail now, not after a minute of training
    torch.manual_seed(train.seed)
    judge = AttributeJudge(config).to(device)

    def loss_fn(model, step):
        batch = make_dataset(train.batch_size, "all", seed=train.seed * 1_000_003 + step, world=world)
        return judge_loss(model, batch.images, batch.attributes)

    # No checkpointing inside the loop: a minute of training is cheaper to redo than to resume.
    trainer = Trainer(judge, loss_fn, train, "judge", progress=progress)
    judge = trainer.run()
    metrics = {f"accuracy_{k}": v for k, v in judge_accuracy(judge, eval_size, world=world).items()} if eval_size else {}
    metrics |= {"eval_size": eval_size, "train_seconds": round(trainer.seconds, 1),
                "torch_threads": torch.get_num_threads(), "train_config": train.__dict__,
                "history": trainer.history[::10]}
    if out is not None:
        save_judge(judge, out, metrics, trainer.step)
    judge.metrics = metrics
    return judge, metrics


def save_judge(model: AttributeJudge, path, metrics: dict | None = None, step: int | None = None):
    return checkpoints.save(path, "judge", model.config, model.state_dict(), metrics, step)


def load_judge(path=None, device: str | torch.device = "cpu", extended: bool = False) -> AttributeJudge:
    """The shipped judge (data/checkpoints/judge), or one saved at `path`, in eval mode.

    extended: load a judge of new concepts too (default path data/checkpoints/judge_extended)."""
    config_cls = ExtendedJudgeConfig if extended else JudgeConfig
    default = "judge_extended" if extended else "judge"
    model, meta = checkpoints.load_module(path or default, "judge", config_cls, AttributeJudge)
    model.metrics = meta.get("metrics", {})
    return model.to(device)
