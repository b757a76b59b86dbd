"""New concepts (notebook 10): shapes and colours the shipped models never saw, in the world and
in CLIP's vocabulary.

The default world (`minidalle.world`) stays exactly as it is: same vocabulary, same held-out pairs,
same images for the same seed, and "star" or "pink" are unknown words there. A `World` made with
`World.extended("star", "pink")` knows the new words on top of the old ones; its methods (or
`world=` on world's functions) render, sample, caption and parse them. New words come after the
old vocabulary, so every old token id stays what it was. The old held-out pairs stay held out.
`grow_vocabulary` gives a trained CLIP rows for the new words, leaving the old rows as they are.
Shape legend: N images, S image side (pixels), V old vocabulary, k new words, M text width.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from minidalle import world as base
from minidalle.tokenizer import WordTokenizer
from minidalle.world import COLORS, RGB, SHAPES, VOCABULARY, Attributes, Samples

if TYPE_CHECKING:
    from minidalle.clip import CLIP

INITS = ("category", "mean", "random")  # how new token-embedding rows start (new_rows)


# ----------------------------------------------------------------------------- the new concepts
def _star_mask(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Five-pointed star, apex up, outer radius 1.05 r, inner 0.45 of that: mask (n, S, S)."""
    outer, half = 1.05 * r, math.pi / 5  # half the angle between two points
    angle = np.mod(np.arctan2(dy, dx) + math.pi / 2, 2 * half)  # 0 at a point (the apex is at -90 degrees)
    angle = np.minimum(angle, 2 * half - angle)  # folded into [0, half]: each edge is the same
    # The edge runs from the point (1, 0) to the inner corner 0.45 (cos half, sin half) (unit outer
    # radius); along a ray at `angle` it lies at distance d_y / (cos(angle) d_y - sin(angle) d_x).
    d_x, d_y = 0.45 * math.cos(half) - 1.0, 0.45 * math.sin(half)
    edge = outer * d_y / (np.cos(angle) * d_y - np.sin(angle) * d_x)
    return dx**2 + dy**2 <= edge**2


def _ring_mask(dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """A ring (annulus): between 0.5 r and r from the centre."""
    distance2 = dx**2 + dy**2
    return (distance2 <= r**2) & (distance2 >= (0.5 * r) ** 2)


NEW_SHAPES = {"star": _star_mask, "ring": _ring_mask}
NEW_COLORS = {"pink": (1.00, 0.50, 0.78)}  # far from red, purple, orange and white (every channel apart)


# ----------------------------------------------------------------------------- the world
@dataclass(frozen=True)
class World:
    """The shapes world plus new shapes and colours; `World()` is the default world itself."""

    new_shapes: tuple = ()
    new_colors: tuple = ()

    def __post_init__(self):
        for word in self.new_shapes:
            if word not in NEW_SHAPES:
                raise ValueError(f"no new shape {word!r}; the renderer can add {', '.join(NEW_SHAPES)}")
        for word in self.new_colors:
            if word not in NEW_COLORS:
                raise ValueError(f"no new colour {word!r}; the renderer can add {', '.join(NEW_COLORS)}")
        if len(set(self.new_words)) != len(self.new_words):
            raise ValueError(f"a new word is given twice: {self.new_words}")

    @classmethod
    def extended(cls, *words: str) -> "World":
        """World.extended("star", "pink"): the shapes world plus these new shapes and colours."""
        known = ", ".join((*NEW_SHAPES, *NEW_COLORS))
        for word in words:
            if word not in NEW_SHAPES and word not in NEW_COLORS:
                raise ValueError(f"unknown new concept {word!r}; available: {known}")
        return cls(tuple(w for w in words if w in NEW_SHAPES), tuple(w for w in words if w in NEW_COLORS))

    # -------------------------------------------------------------- what world.py reads
    @property
    def shapes(self) -> tuple:
        return SHAPES + self.new_shapes

    @property
    def colors(self) -> tuple:
        return COLORS + self.new_colors

    @property
    def new_words(self) -> tuple:
        return self.new_shapes + self.new_colors

    @property
    def vocabulary(self) -> tuple:
        return VOCABULARY + self.new_words  # appended: old token ids do not move

    @property
    def rgb(self) -> dict:
        return RGB | {c: NEW_COLORS[c] for c in self.new_colors}

    def shape_mask(self, shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
        """Boolean mask (n, S, S) of a shape centred at 0 with 'radius' r (n, 1, 1)."""
        return NEW_SHAPES[shape](dx, dy, r) if shape in self.new_shapes else base._shape_mask(shape, dx, dy, r)

    # -------------------------------------------------------------- the world's functions, extended
    def parse_prompt(self, text: str) -> Attributes:
        return base.parse_prompt(text, world=self)

    def render(self, scenes: Sequence[Attributes], seed: int = 0, image_size: int = 32) -> torch.Tensor:
        """Full scenes -> images (N, 3, S, S) in [0, 1]; the same as world.render for old scenes."""
        return base.render(scenes, seed=seed, image_size=image_size, world=self)

    def make_dataset(self, n: int, split: str = "train", seed: int = 0, partial: bool = False,
                     image_size: int = 32) -> Samples:
        return base.make_dataset(n, split, seed, partial, image_size, world=self)

    def all_scenes(self, split: str = "all") -> list[Attributes]:
        return base.all_scenes(split, world=self)

    # -------------------------------------------------------------- the new concept's examples
    def is_new(self, attrs: Attributes) -> bool:
        """True when a scene or prompt names a new shape or a new main colour."""
        return attrs.shape in self.new_shapes or attrs.color in self.new_colors

    def concept_scenes(self, n: int, rng: np.random.Generator) -> list[Attributes]:
        """n random full scenes that each show a new shape or a new main colour (any other attribute
        as the world samples them; the old held-out pairs never)."""
        if not self.new_words:
            raise ValueError("the default world has no new concept: use World.extended('star', ...)")
        scenes: list[Attributes] = []
        while len(scenes) < n:  # rejection sampling: about a third of the world's scenes qualify
            scenes += [s for s in base.sample_scenes(4 * (n - len(scenes)) + 8, "train", rng, self) if self.is_new(s)]
        return scenes[:n]

    def concept_dataset(self, n: int, seed: int = 0, partial: bool = True) -> Samples:
        """n captioned examples of the new concept: images, one caption each (partial ones drop
        optional words at random, as the training captions of the old world do), scenes."""
        rng = np.random.default_rng(seed)
        scenes = self.concept_scenes(n, rng)
        captions = [base.random_caption_variant(a, rng) if partial else base.caption(a) for a in scenes]
        return Samples(self.render(scenes, seed=int(rng.integers(2**31))), captions, scenes)

    def category_of(self, word: str) -> str:
        """'shape' or 'color' for a new word (what its embedding row is initialised from)."""
        if word in self.new_shapes:
            return "shape"
        if word in self.new_colors:
            return "color"
        raise ValueError(f"{word!r} is not a new word of this world ({', '.join(self.new_words) or 'none'})")


DEFAULT = World()
STAR_PINK = World.extended("star", "pink")  # the course's running example (notebook 10)


# ----------------------------------------------------------------------------- vocabulary
class GrownEmbedding(nn.Module):
    """A token embedding with k new rows after the V old ones; the old rows stay the old tensor."""

    def __init__(self, old: nn.Embedding, new_rows: torch.Tensor):
        super().__init__()
        self.weight = old.weight  # (V, M), the shipped rows: frozen unless the text side is fully tuned
        self.new_rows = nn.Parameter(new_rows.clone())  # (k, M)

    @property
    def num_embeddings(self) -> int:
        return self.weight.shape[0] + self.new_rows.shape[0]

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> (B, T, M); ids >= V read the new rows."""
        return F.embedding(ids, torch.cat([self.weight, self.new_rows]))


def new_rows(embedding: torch.Tensor, tokenizer: WordTokenizer, world: World, init: str = "category",
             seed: int = 0) -> torch.Tensor:
    """Initial rows (k, M) for the world's new words, from the old rows (V, M).

    "category": the mean of the rows of the old words of the same kind (a new shape starts at the
    average shape, so the text encoder reads it as *some* shape from the first step); "mean": the
    mean of all word rows; "random": Gaussian with the old rows' per-coordinate spread.
    """
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, not {init!r}")
    rows = embedding.detach()
    words = [w for w in tokenizer.vocab[3:] if w not in world.new_words]  # real words, no pad/start/end
    if init == "random":
        g = torch.Generator().manual_seed(seed)
        return rows[3:].std() * torch.randn(len(world.new_words), rows.shape[1], generator=g).to(rows)
    out = []
    for word in world.new_words:
        family = (SHAPES if world.category_of(word) == "shape" else COLORS) if init == "category" else words
        out.append(rows[[tokenizer.index[w] for w in family]].mean(dim=0))
    return torch.stack(out)  # (k, M)


def grow_vocabulary(clip: CLIP, world: World, init: str = "category", seed: int = 0) -> CLIP:
    """Give CLIP's tokenizer and text encoder the world's new words, in place; old ids and rows unchanged."""
    if getattr(clip.tokenizer, "extra_words", ()):
        raise ValueError(f"this CLIP already has new words {clip.tokenizer.extra_words}")
    if not clip.config.world_tokenizer:
        raise ValueError("only a CLIP that reads the shapes world's own words can grow its vocabulary")
    if not world.new_words:
        raise ValueError("the world has no new words to add")
    tokenizer = WordTokenizer(clip.config.text.context_length, extra_words=world.new_words)
    rows = new_rows(clip.text.token_embedding.weight, tokenizer, world, init, seed)
    clip.text.token_embedding = GrownEmbedding(clip.text.token_embedding, rows)
    clip.tokenizer = tokenizer
    text = dataclasses.replace(clip.config.text, vocab_size=len(tokenizer))
    # the config names every word now (old ones first), so its vocab_size check still holds
    clip.text.config, clip.config = text, dataclasses.replace(clip.config, text=text, vocabulary=tokenizer.known_words)
    return clip
