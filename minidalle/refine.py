"""Refinement (notebook 10): teach the trained pipeline a new concept from a few captioned examples.

Three steps, in pipeline order: grow the vocabulary (new token-embedding rows, the old ones kept
as they are), then tune CLIP's text side, the prior and the decoder, either fully or through
low-rank adapters (minidalle.lora), on the examples mixed with replayed old data, and save only
what changed. The CLIP image encoder never changes: the prior and decoder live in its space.
Shape legend: B batch, E CLIP embedding width, V old vocabulary, k new words, M text width.
"""
from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from typing import Callable, ClassVar, NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from minidalle import checkpoints
from minidalle.clip import CLIP, contrastive_loss
from minidalle.concepts import INITS, World, grow_vocabulary
from minidalle.lora import add_lora, count_parameters, merge_lora
from minidalle.train import TrainConfig, learning_rate
from minidalle.world import Samples, make_dataset

STAGES = ("text", "prior", "decoder")


# ----------------------------------------------------------------------------- recipe
@dataclass(frozen=True)
class Recipe:
    """What to teach, from how much data, which stages to tune and how (rank 0 = full fine-tuning)."""

    words: tuple = ("star", "pink")
    examples: int = 200  # N captioned examples of the new concept
    replay: bool = True  # mix as many old-world examples into every batch
    stages: tuple = STAGES
    rank: int = 4  # LoRA rank of every tuned layer; 0 = tune every weight of the tuned stages
    alpha: float = 4.0  # LoRA scale alpha / rank (Hu et al. 2021 fix alpha to the first rank tried)
    init: str = "category"
    batch_size: int = 32  # new examples per step of the text side and prior (plus as many replayed ones)
    decoder_batch: int = 16  # the same for the decoder, whose steps cost far more
    decoder_replay: int = 2  # replayed old examples per new one in the decoder's batches (with replay)
    # The text and prior step counts are sized for a shared 2-core CPU, not tuned; the decoder's
    # settings come from benchmarks/exp16 (the decoder is where a new shape is learnt, and slowly).
    text_steps: int = 100
    prior_steps: int = 200
    decoder_steps: int = 400
    lr: float = 2e-3  # LoRA; full fine-tuning uses full_lr (all weights move: smaller steps)
    full_lr: float = 2e-4
    rows_lr: float = 2e-2  # the new rows start far from where they end (row norms are about 9)
    decoder_lr: float | None = 6e-3  # the decoder's LoRA learning rate (None: lr); full fine-tuning uses full_lr
    seed: int = 0

    # Fields added after refinements were saved, with the value that gives the old behaviour when missing
    ADDED_FIELDS: ClassVar[dict] = {"decoder_replay": 1, "decoder_lr": None}

    @classmethod
    def tiny(cls) -> "Recipe":
        return cls(examples=8, batch_size=4, decoder_batch=2, text_steps=2, prior_steps=2, decoder_steps=2)

    def __post_init__(self):
        World.extended(*self.words)  # unknown words fail here, with the list of new concepts
        if not self.stages or "text" not in self.stages or tuple(s for s in STAGES if s in self.stages) != self.stages:
            raise ValueError(f"stages must be 'text' then optionally 'prior', 'decoder' (in pipeline order), got "
                             f"{self.stages}: new words always need the text side")
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 0:
            raise ValueError(f"rank must be an integer >= 0 (0: full fine-tuning), got {self.rank!r}")
        if self.init not in INITS:
            raise ValueError(f"init must be one of {INITS}, not {self.init!r}")
        for name in ("examples", "batch_size", "decoder_batch", "decoder_replay"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)!r}")
        if self.decoder_lr is not None and not self.decoder_lr > 0:
            raise ValueError(f"decoder_lr must be a positive number or None (the stage's usual rate), got {self.decoder_lr!r}")

    def stage_lr(self, stage: str) -> float:
        """The learning rate of a stage's adapters; rank 0 (every weight moves): full_lr in every stage."""
        if not self.rank:
            return self.full_lr
        return self.decoder_lr or self.lr if stage == "decoder" else self.lr

    @property
    def world(self) -> World:
        return World.extended(*self.words)

    def describe(self) -> str:
        """'text+prior+decoder, LoRA r=4, N=200, replay' (for tables)."""
        how = f"LoRA r={self.rank}" if self.rank else "full"
        return f"{'+'.join(self.stages)}, {how}, N={self.examples}, {'replay' if self.replay else 'no replay'}"


# ----------------------------------------------------------------------------- the model side
def prepare(pipe, recipe: Recipe):
    """Grow the vocabulary and make exactly the recipe's parameters trainable (LoRA or full), in place."""
    world = recipe.world
    for module in (pipe.clip, pipe.prior, pipe.decoder):
        module.requires_grad_(False)
    grow_vocabulary(pipe.clip, world, recipe.init, recipe.seed)
    stage_modules = {"text": pipe.clip, "prior": pipe.prior, "decoder": pipe.decoder.unet}
    is_text = _is_text_side
    for stage in recipe.stages:
        module = stage_modules[stage]
        where = is_text if stage == "text" else (lambda name: True)
        if recipe.rank:  # A drawn from the recipe's seed and the stage: the same recipe, the same adapters
            seed = int(np.random.SeedSequence([recipe.seed, 4, STAGES.index(stage)]).generate_state(1)[0])
            generator = torch.Generator().manual_seed(seed)
            add_lora(module, recipe.rank, recipe.alpha, convolutions=stage == "decoder", where=where, generator=generator)
        else:
            for name, p in module.named_parameters():
                p.requires_grad_(where(name) and name != "logit_scale")
    pipe.clip.text.token_embedding.new_rows.requires_grad_(True)
    pipe.world = world
    return pipe


def _is_text_side(name: str) -> bool:
    return name.startswith(("text.", "text_projection"))


def trainable_state(pipe) -> dict[str, torch.Tensor]:
    """{"clip.…", "prior.…", "decoder.…": tensor} of every trainable parameter: what a refinement saves."""
    modules = {"clip": pipe.clip, "prior": pipe.prior, "decoder": pipe.decoder}
    return {f"{stage}.{name}": p for stage, m in modules.items() for name, p in m.named_parameters() if p.requires_grad}


def fingerprint(module: nn.Module) -> str:
    """A short hash of a module's weights: a refinement only fits the exact base it was trained on."""
    digest = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        digest.update(name.encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


# ----------------------------------------------------------------------------- data
class RefineData(NamedTuple):
    examples: Samples  # the N captioned examples of the new concept
    replay: Samples  # old-world examples (partial captions, as the old training data)
    example_embeddings: torch.Tensor  # (N, E) frozen CLIP image embeddings
    replay_embeddings: torch.Tensor  # (R, E)


POOL = 1000  # examples are the first N of one pool, so a smaller N is a subset of a larger one
REPLAY = 2048


@torch.no_grad()
def refine_data(clip: CLIP, recipe: Recipe, replay_size: int = REPLAY, pool: int = POOL) -> RefineData:
    """The recipe's examples (the first N of a pool) and a replay bank, with their frozen CLIP image
    embeddings."""
    pool = recipe.world.concept_dataset(max(pool, recipe.examples), seed=recipe.seed + 2_000_003)
    n = recipe.examples
    examples = Samples(pool.images[:n], pool.captions[:n], pool.attributes[:n])
    replay = make_dataset(replay_size, "train", seed=recipe.seed + 3_000_017, partial=True)

    def embed(images):
        return torch.cat([clip.encode_image(images[i:i + 512]) for i in range(0, len(images), 512)])

    return RefineData(examples, replay, embed(examples.images), embed(replay.images))


def _batch(data: RefineData, size: int, replay: bool, rng: np.random.Generator, ratio: int = 1):
    """Indices of a step's new examples (no repeats within a step) and ratio times as many replayed ones."""
    n = len(data.examples.captions)
    new = rng.choice(n, size=min(size, n), replace=False)
    old = rng.choice(len(data.replay.captions), size=size * ratio, replace=False) if replay else []
    return new, np.asarray(old, dtype=int)


def _pick(data: RefineData, new, old):
    """(images (B, 3, 32, 32), captions, image embeddings (B, E)) of a step's examples."""
    images = torch.cat([data.examples.images[new], data.replay.images[old]])
    captions = [data.examples.captions[i] for i in new] + [data.replay.captions[i] for i in old]
    return images, captions, torch.cat([data.example_embeddings[new], data.replay_embeddings[old]])


# ----------------------------------------------------------------------------- training
def _optimize(groups: list[dict], loss_fn: Callable[[int], torch.Tensor], steps: int, lr: float,
              desc: str, progress: bool) -> list[float]:
    """AdamW over parameter groups ({"params", "scale"}: lr multiplier), warm-up then cosine decay
    (train.learning_rate), gradient clipping at 1; no weight decay (it would pull a fine-tuned
    model towards zero, not towards the model it started from). Returns the losses."""
    config = TrainConfig(steps=steps, lr=lr, warmup=max(1, steps // 10))
    groups = [g for g in groups if g["params"]]
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=0.0)
    params = [p for g in groups for p in g["params"]]
    losses = []
    for step in tqdm(range(steps), desc=desc, disable=not progress):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, config) * group["scale"]
        loss = loss_fn(step)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        losses.append(round(loss.item(), 5))
    return losses


def _groups(module: nn.Module, recipe: Recipe) -> list[dict]:
    """The new rows (own learning rate) and every other trainable parameter of a stage."""
    lr = recipe.stage_lr("text")  # the rows' scale is relative to the text side's rate
    rows = [p for n, p in module.named_parameters() if p.requires_grad and n.endswith("new_rows")]
    rest = [p for n, p in module.named_parameters() if p.requires_grad and not n.endswith("new_rows")]
    return [{"params": rows, "scale": recipe.rows_lr / lr}, {"params": rest, "scale": 1.0}]


def _train_text(pipe, data: RefineData, recipe: Recipe, progress: bool) -> list[float]:
    """CLIP's text side against the frozen image side: the contrastive loss of Radford et al. 2021."""
    clip, rng = pipe.clip, np.random.default_rng([recipe.seed, 1])
    scale = clip.clamped_scale().detach()

    def loss_fn(step):
        _, captions, image_emb = _pick(data, *_batch(data, recipe.batch_size, recipe.replay, rng))
        return contrastive_loss(image_emb, clip.encode_text(captions), scale)

    return _optimize(_groups(clip, recipe), loss_fn, recipe.text_steps, recipe.stage_lr("text"), "refine text", progress)


def _train_prior(pipe, data: RefineData, recipe: Recipe, progress: bool) -> list[float]:
    """The prior on (refined text embedding of the caption -> CLIP image embedding)."""
    rng, generator = np.random.default_rng([recipe.seed, 2]), torch.Generator().manual_seed(recipe.seed + 2)
    cache: dict[str, torch.Tensor] = {}  # the text side is frozen now: each caption is encoded once

    def loss_fn(step):
        _, captions, image_emb = _pick(data, *_batch(data, recipe.batch_size, recipe.replay, rng))
        missing = [c for c in dict.fromkeys(captions) if c not in cache]
        if missing:
            with torch.no_grad():
                cache.update(zip(missing, pipe.clip.encode_text(missing)))
        return pipe.prior.loss(torch.stack([cache[c] for c in captions]), image_emb, generator)

    return _optimize(_groups(pipe.prior, recipe), loss_fn, recipe.prior_steps, recipe.stage_lr("prior"), "refine prior",
                     progress)


def _train_decoder(pipe, data: RefineData, recipe: Recipe, progress: bool) -> list[float]:
    """The decoder on (image embedding -> image) of the examples and replayed images."""
    rng, generator = np.random.default_rng([recipe.seed, 3]), torch.Generator().manual_seed(recipe.seed + 3)

    def loss_fn(step):
        new, old = _batch(data, recipe.decoder_batch, recipe.replay, rng, recipe.decoder_replay)
        images, _, image_emb = _pick(data, new, old)
        return pipe.decoder.loss(images, image_emb, generator)

    return _optimize(_groups(pipe.decoder, recipe), loss_fn, recipe.decoder_steps, recipe.stage_lr("decoder"),
                     "refine decoder", progress)


TRAIN = {"text": _train_text, "prior": _train_prior, "decoder": _train_decoder}
PREFIX = {"text": "clip.", "prior": "prior.", "decoder": "decoder."}


def _stage_key(recipe: Recipe, stage: str) -> tuple:
    """What a stage's result depends on (the decoder's not on the text side or the prior)."""
    fields = dataclasses.asdict(recipe)
    if stage == "decoder":
        keep = ("words", "examples", "replay", "rank", "alpha", "decoder_batch", "decoder_replay", "decoder_steps", "lr",
                "full_lr", "decoder_lr", "seed")
    else:
        drop = {"stages", "decoder_steps", "decoder_batch", "decoder_replay", "decoder_lr"}
        drop |= {"prior_steps"} if stage == "text" else set()
        keep = tuple(k for k in fields if k not in drop)
    return (stage,) + tuple((k, fields[k]) for k in keep)


def refine(pipe, recipe: Recipe, data: RefineData | None = None, cache: dict | None = None,
           progress: bool = True) -> dict:
    """Teach pipe (an UnCLIP, changed in place) the recipe's new words; returns what it cost.

    data: from refine_data (made here when None). cache: a dict shared between calls, so that a
    stage two recipes have in common (same key) trains once; its CPU seconds count for both.
    Returns {"cpu_seconds": {stage: s}, "losses": {stage: [...]}, "trainable_parameters": n,
    "base": {stage: fingerprint}}.
    """
    base = {name: fingerprint(getattr(pipe, name)) for name in ("clip", "prior", "decoder")}
    prepare(pipe, recipe)
    data = refine_data(pipe.clip, recipe) if data is None else data
    info = {"cpu_seconds": {}, "losses": {}, "trainable_parameters": count_parameters_of(pipe), "base": base}
    for stage in recipe.stages:
        key = _stage_key(recipe, stage) + (("replay_size", len(data.replay.captions)),)
        if cache is not None and key in cache:
            tensors, info["cpu_seconds"][stage], info["losses"][stage] = cache[key]
            _load(pipe, tensors)
            continue
        start = time.process_time()  # CPU seconds of this process, all threads: less noisy than wall time
        info["losses"][stage] = TRAIN[stage](pipe, data, recipe, progress)
        info["cpu_seconds"][stage] = round(time.process_time() - start, 1)
        if cache is not None:
            tensors = {k: v.detach().clone() for k, v in trainable_state(pipe).items() if k.startswith(PREFIX[stage])}
            cache[key] = (tensors, info["cpu_seconds"][stage], info["losses"][stage])
    finish(pipe)
    return info


def count_parameters_of(pipe) -> int:
    """Trainable parameters of a prepared pipeline (all three stages)."""
    return sum(count_parameters(m) for m in (pipe.clip, pipe.prior, pipe.decoder))


def _load(pipe, tensors: dict[str, torch.Tensor]) -> None:
    state = trainable_state(pipe)
    with torch.no_grad():
        for name, value in tensors.items():
            state[name].copy_(value)


def finish(pipe) -> None:
    """Training is over: merge the adapters into their weights (sampling costs what it did), eval mode."""
    for module in (pipe.clip, pipe.prior, pipe.decoder):
        merge_lora(module)
        module.eval()


# ----------------------------------------------------------------------------- save and load
def save_refinement(pipe, recipe: Recipe, path, metrics: dict | None = None, force: bool = False):
    """Write only what the refinement trained (new rows, adapters or tuned weights) + the recipe."""
    checkpoints.ensure_writable(path, force)
    return checkpoints.save(path, "refinement", recipe, trainable_state(pipe), metrics)


def load_refinement(path, base=None, device: str | torch.device = "cpu"):
    """The pipeline at `base` (default: the shipped checkpoints) with the refinement at `path` applied.

    Fails clearly when the refinement was trained on other base checkpoints (it would not fit them).
    """
    from minidalle.pipeline import UnCLIP

    meta = checkpoints.read_meta(path, "refinement")
    recipe = checkpoints.config_from_dict(Recipe, meta["config"])
    pipe = UnCLIP.from_pretrained(base, device)
    for name, expected in meta.get("metrics", {}).get("base", {}).items():
        if fingerprint(getattr(pipe, name)) != expected:
            raise checkpoints.CheckpointError(
                f"{checkpoints.paths(path)[1]} was trained on another {name} checkpoint than the one at "
                f"{base or 'data/checkpoints'}; re-make it (python -m minidalle finetune ... --force)")
    prepare(pipe, recipe)
    tensors = checkpoints.load_tensors(path, trainable_state(pipe))
    _load(pipe, {k: v.to(device) for k, v in tensors.items()})
    finish(pipe)
    pipe.recipe, pipe.refinement_metrics = recipe, meta.get("metrics", {})
    return pipe
