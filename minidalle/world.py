"""The shapes world: attributes, captions, a prompt parser and a vectorized renderer.

One object per 32x32 image on a dark, slightly noisy background. Everything is generated
from a seed with numpy, so the same seed always gives the same images and captions.
Shape legend: N images, C=3 channels, S image side (pixels). New shapes and colours (notebook 10)
come only when asked for: pass `world=minidalle.concepts.World.extended(...)` to the functions.
"""
from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange", "white")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "center")
# (shape, first color) pairs that never appear in training: compositional generalization.
HELDOUT = frozenset({("triangle", "blue"), ("circle", "yellow"), ("cross", "red")})

RGB = {
    "red": (0.90, 0.12, 0.10),
    "green": (0.12, 0.75, 0.15),
    "blue": (0.15, 0.30, 0.95),
    "yellow": (0.95, 0.90, 0.12),
    "purple": (0.58, 0.18, 0.80),
    "orange": (1.00, 0.55, 0.05),
    "white": (0.95, 0.95, 0.95),
}
ARTICLES = ("a", "an")
PLACE_WORDS = {"on": ("left", "right", "top", "bottom"), "in": ("center",)}
VOCABULARY = tuple(
    dict.fromkeys(ARTICLES + SIZES + COLORS + ("and", "striped") + SHAPES + ("on", "in", "the") + POSITIONS)
)


@dataclass(frozen=True)
class Attributes:
    """What a scene (all fields set) or a prompt (None = left open) says about the object."""

    shape: str
    color: str | None = None
    striped: bool | None = None
    color2: str | None = None
    size: str | None = None
    position: str | None = None

    @property
    def is_full(self) -> bool:
        """True for a complete scene: everything set, color2 exactly when striped."""
        set_all = None not in (self.color, self.striped, self.size, self.position)
        return set_all and ((self.color2 is not None) == bool(self.striped))

    @property
    def heldout(self) -> bool:
        return (self.shape, self.color) in HELDOUT


# ----------------------------------------------------------------------------- captions
def caption(attrs: Attributes) -> str:
    """The caption of a scene or a partial prompt: `a {size} {colors} {shape} {where}`."""
    words = ["a"]
    if attrs.size is not None:
        words.append(attrs.size)
    if attrs.striped:
        if attrs.color is not None and attrs.color2 is not None:
            words += [attrs.color, "and", attrs.color2]
        elif attrs.color is not None:
            words.append(attrs.color)
        words.append("striped")
    elif attrs.color is not None:
        words.append(attrs.color)
    words.append(attrs.shape)
    if attrs.position == "center":
        words += ["in", "the", "center"]
    elif attrs.position is not None:
        words += ["on", "the", attrs.position]
    return " ".join(words)


def partial_variant(attrs: Attributes, rng: np.random.Generator, p_full: float = 0.4) -> Attributes:
    """Drop optional parts of a full scene at random (the prompt a training caption shows).

    Only the shape is kept always. A striped object may be described as `red and green
    striped`, `red striped`, `striped` or with no color at all, never as a bare `red`
    (that would claim it is solid).
    """
    if rng.random() < p_full:
        return attrs
    keep_size, keep_position = rng.random(2) < 0.5
    color, striped, color2 = attrs.color, attrs.striped, attrs.color2
    choice = rng.integers(4) if attrs.striped else rng.integers(2) * 3
    if choice == 1:  # "red striped": stripe color left open
        color2 = None
    elif choice == 2:  # "striped": both colors left open
        color, color2 = None, None
    elif choice == 3:  # no color words at all: color and pattern left open
        color, striped, color2 = None, None, None
    return Attributes(
        attrs.shape, color, striped, color2,
        attrs.size if keep_size else None, attrs.position if keep_position else None,
    )


def random_caption_variant(attrs: Attributes, rng: np.random.Generator, p_full: float = 0.4) -> str:
    """A training caption: the full caption with probability p_full, else a partial one."""
    return caption(partial_variant(attrs, rng, p_full))


def _lexicon(world) -> tuple[tuple, tuple, tuple]:
    """(shapes, colors, vocabulary) of the default world, or of an extended one (concepts.World)."""
    return (SHAPES, COLORS, VOCABULARY) if world is None else (world.shapes, world.colors, world.vocabulary)


def all_scenes(split: str = "all", world=None) -> list[Attributes]:
    """Every distinct full scene (= every full caption) of the grammar, in a fixed order."""
    shapes, colors, _ = _lexicon(world)
    scenes = []
    for shape, color, size, position in itertools.product(shapes, colors, SIZES, POSITIONS):
        for color2 in (None,) + tuple(c for c in colors if c != color):
            scenes.append(Attributes(shape, color, color2 is not None, color2, size, position))
    return [s for s in scenes if _in_split(s, split)]


def _in_split(attrs: Attributes, split: str) -> bool:
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', not {split!r}")
    return split == "all" or attrs.heldout == (split == "heldout")


# ----------------------------------------------------------------------------- parsing
def _fail(problem: str, vocabulary: Sequence[str] = VOCABULARY) -> None:
    raise ValueError(f"{problem}. Prompts look like 'a large red and green striped circle on the left'; "
                     f"accepted words: {', '.join(vocabulary)}")


def parse_prompt(text: str, world=None) -> Attributes:
    """Decompose a caption of the grammar into Attributes (None = left open).

    Grammar: [a|an] [size] [colors] shape [on the left|right|top|bottom | in the center],
    colors = `red` | `red striped` | `red and green striped` | `striped`.
    Raises ValueError naming the offending word and listing the vocabulary (of `world`, default:
    the shapes world; a concepts.World adds its new words).
    """
    shapes, colors, vocabulary = _lexicon(world)

    def fail(problem: str) -> None:
        _fail(problem, vocabulary)

    if not isinstance(text, str):
        raise TypeError(f"a prompt must be a string, not {type(text).__name__}")
    words = text.lower().split()
    if not words:
        fail("the prompt is empty")
    for w in words:
        if w not in vocabulary:
            fail(f"unknown word {w!r}")
    i = 0

    def peek() -> str | None:
        return words[i] if i < len(words) else None

    if peek() in ARTICLES:
        i += 1
    size = color = color2 = None
    striped = None
    if peek() in SIZES:
        size, i = words[i], i + 1
    if peek() in colors:
        color, striped, i = words[i], False, i + 1
        if peek() == "and":
            i += 1
            if peek() not in colors:
                fail(f"expected a stripe color after 'and', got {peek() or 'the end of the prompt'!r}")
            color2, i = words[i], i + 1
            if color2 == color:
                fail(f"the stripe color {color2!r} must differ from the main color")
            if peek() != "striped":
                fail(f"expected 'striped' after '{color} and {color2}', got {peek() or 'the end of the prompt'!r}")
        if peek() == "striped":
            striped, i = True, i + 1
    elif peek() == "striped":
        striped, i = True, i + 1
    if peek() not in shapes:
        word = peek()
        if word is None:
            fail(f"the prompt names no shape (one of {', '.join(shapes)})")
        if word in SIZES or word in colors or word == "striped":
            fail(f"the word {word!r} is out of order: size, then colors, then the shape")
        fail(f"unexpected word {word!r} where the shape ({', '.join(shapes)}) should be")
    shape, i = words[i], i + 1
    position = None
    if peek() in PLACE_WORDS:
        lead, place = words[i], words[i:i + 3]
        if len(place) < 3 or place[1] != "the" or place[2] not in PLACE_WORDS[lead]:
            fail(f"unexpected place {' '.join(place)!r}: say 'on the left|right|top|bottom' or 'in the center'")
        position, i = words[i + 2], i + 3
    if peek() is not None:
        word = peek()
        if word in shapes:
            fail(f"a second shape {word!r}: a prompt describes one object ({shape!r})")
        if word in SIZES or word in colors or word == "striped":
            fail(f"the word {word!r} is out of order: size and colors go before the shape")
        fail(f"unexpected word {word!r} after {' '.join(words[:i])!r}")
    return Attributes(shape, color, striped, color2, size, position)


# ----------------------------------------------------------------------------- sampling
def sample_scenes(n: int, split: str = "train", rng: np.random.Generator | None = None,
                  world=None) -> list[Attributes]:
    """n random full scenes from a split ('train' never holds a HELDOUT pair, 'heldout' only those)."""
    all_shapes, colors, _ = _lexicon(world)
    rng = np.random.default_rng(0) if rng is None else rng
    _in_split(Attributes("circle"), split)  # validates the split name
    allowed = {s: [c for c in colors if _in_split(Attributes(s, c), split)] for s in all_shapes}
    shapes = [s for s in all_shapes if allowed[s]]
    shape_idx = rng.integers(len(shapes), size=n)
    u_color, u_color2 = rng.random(n), rng.integers(len(colors) - 1, size=n)
    striped = rng.random(n) < 0.5
    sizes, positions = rng.integers(len(SIZES), size=n), rng.integers(len(POSITIONS), size=n)
    scenes = []
    for k in range(n):
        shape = shapes[shape_idx[k]]
        color = allowed[shape][int(u_color[k] * len(allowed[shape]))]
        others = [c for c in colors if c != color]
        color2 = others[u_color2[k]] if striped[k] else None
        scenes.append(Attributes(shape, color, bool(striped[k]), color2, SIZES[sizes[k]], POSITIONS[positions[k]]))
    return scenes


# ----------------------------------------------------------------------------- rendering
_CENTERS = {"left": (9.0, 16.0), "right": (23.0, 16.0), "top": (16.0, 9.0), "bottom": (16.0, 23.0), "center": (16.0, 16.0)}
_RADIUS = {"small": 4.5, "large": 7.5}
_STRIPE_PERIOD = {"small": 4.5, "large": 6.0}  # pixels at 32x32: first color 2/3, second 1/3


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Boolean mask (n, S, S) of a shape centred at 0 with 'radius' r (n, 1, 1)."""
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.85 * r
    if shape == "triangle":  # apex up, base at +0.8 r
        height = 1.8 * r
        return (dy <= 0.8 * r) & (np.abs(dx) <= (dy + r) / height * r)
    arm = r / 3  # cross: a horizontal and a vertical bar
    return ((np.abs(dx) <= r) & (np.abs(dy) <= arm)) | ((np.abs(dy) <= r) & (np.abs(dx) <= arm))


def render(attrs_list: Sequence[Attributes], seed: int = 0, image_size: int = 32, world=None) -> torch.Tensor:
    """Draw full scenes: returns (N, 3, S, S) float32 in [0, 1], jittered and noisy per seed."""
    attrs_list = list(attrs_list)
    shapes, colors, _ = _lexicon(world)
    rgb, shape_mask = (RGB, _shape_mask) if world is None else (world.rgb, world.shape_mask)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 16:
        raise ValueError(f"image_size must be an integer >= 16, got {image_size!r}")
    for a in attrs_list:
        if not isinstance(a, Attributes) or not a.is_full:
            raise ValueError(f"render needs full scenes (every attribute set), got {a!r}")
        for word, known in ((a.shape, shapes), (a.color, colors), (a.color2 or a.color, colors)):
            if word not in known:
                raise ValueError(f"this world cannot draw {word!r} (it knows {', '.join(known)}); new concepts "
                                 f"need world=minidalle.concepts.World.extended(...)")
    n, S = len(attrs_list), image_size
    rng = np.random.default_rng(seed)
    scale = S / 32.0
    centers = np.array([_CENTERS[a.position] for a in attrs_list], dtype=np.float32).reshape(n, 2)
    centers = (centers + rng.uniform(-1.0, 1.0, size=(n, 2))) * scale  # (N, 2) jittered x, y
    radius = np.array([_RADIUS[a.size] for a in attrs_list], dtype=np.float32)
    radius = (radius * rng.uniform(0.92, 1.08, size=n) * scale)[:, None, None]  # (N, 1, 1)
    period = np.array([_STRIPE_PERIOD[a.size] for a in attrs_list], dtype=np.float32)[:, None, None] * scale
    color1 = np.array([rgb[a.color] for a in attrs_list], dtype=np.float32).reshape(n, 3)
    color2 = np.array([rgb[a.color2 or a.color] for a in attrs_list], dtype=np.float32).reshape(n, 3)
    color1 = np.clip(color1 + rng.uniform(-0.05, 0.05, size=(n, 3)), 0, 1)
    color2 = np.clip(color2 + rng.uniform(-0.05, 0.05, size=(n, 3)), 0, 1)

    coords = np.arange(S, dtype=np.float32) + 0.5
    dx = coords[None, None, :] - centers[:, 0, None, None]  # (N, 1, S) horizontal offset
    dy = coords[None, :, None] - centers[:, 1, None, None]  # (N, S, 1) vertical offset
    mask = np.zeros((n, S, S), dtype=bool)
    drawn = np.array([a.shape for a in attrs_list], dtype=object)
    for shape in shapes:  # a loop over the shapes, vectorized over images and pixels
        idx = np.nonzero(drawn == shape)[0]
        if len(idx):
            mask[idx] = shape_mask(shape, dx[idx], dy[idx], radius[idx])
    # Horizontal bands from the top of the shape: the first 2/3 of each period is color 1.
    band = np.mod(dy + radius, period) >= (2.0 / 3.0) * period  # (N, S, 1) True on thin stripe
    striped = np.array([bool(a.striped) for a in attrs_list], dtype=bool)[:, None, None]
    use2 = band & striped  # (N, S, 1)
    fill = np.where(use2[:, None], color2[:, :, None, None], color1[:, :, None, None])  # (N, 3, S, 1)

    background = 0.08 + 0.03 * rng.standard_normal((n, 3, S, S), dtype=np.float32)
    image = np.where(mask[:, None], fill, background)  # (N, 3, S, S)
    return torch.from_numpy(np.clip(image, 0.0, 1.0).astype(np.float32))


# ----------------------------------------------------------------------------- datasets
class Samples(NamedTuple):
    images: torch.Tensor  # (N, 3, S, S) in [0, 1]
    captions: list[str]
    attributes: list[Attributes]


def make_dataset(n: int, split: str = "train", seed: int = 0, partial: bool = False,
                 image_size: int = 32, world=None) -> Samples:
    """n rendered scenes of a split with their captions (full ones, or random partial ones).

    world: None for the shapes world, or a minidalle.concepts.World with new shapes and colours."""
    if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 0:
        raise ValueError(f"n must be a non-negative integer, got {n!r}")
    rng = np.random.default_rng(seed)
    scenes = sample_scenes(n, split, rng, world)
    captions = [random_caption_variant(a, rng) if partial else caption(a) for a in scenes]
    images = render(scenes, seed=int(rng.integers(2**31)), image_size=image_size, world=world)
    return Samples(images, captions, scenes)


class ShapesStream(torch.utils.data.IterableDataset):
    """Endless fresh batches for training loops: yields Samples of batch_size each."""

    def __init__(self, batch_size: int, split: str = "train", seed: int = 0, partial: bool = True):
        super().__init__()
        _in_split(Attributes("circle"), split)
        self.batch_size, self.split, self.seed, self.partial = batch_size, split, seed, partial

    def __iter__(self) -> Iterator[Samples]:
        for step in itertools.count():
            yield make_dataset(self.batch_size, self.split, seed=self.seed * 1_000_003 + step, partial=self.partial)

