"""Issue 17: CLIP trained with minimal pairs in every batch, for the stripe colour.

    python benchmarks/exp17/clip_pairs.py OUT [--pairs 32] [--steps 800] [--threads 2]

The shipped recipe trains CLIP on 128 random scenes a step, so two scenes that differ only in
their stripe colour, or only in which of their two colours is the stripe, rarely meet in one
batch, and the contrastive loss seldom has to tell them apart. Here `--pairs` of the 128 items
are pairs: a random train-split scene and its minimal partner, both with their full captions.
A striped scene's partner has its two colours swapped (when that pair of shape and colour is in
the train split) or another stripe colour; a solid scene's partner has another colour. The rest
of the batch is the recipe's (random scenes, partial captions). Everything else is CLIP_TRAIN.
Saves the CLIP to OUT/clip (a folder run_decoder.py --checkpoints and probe.py --clip read) and
prints its metrics.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np
import torch

import minidalle.sources
from minidalle import distributed
from minidalle.train import CLIP_TRAIN, train_clip
from minidalle.world import COLORS, Attributes, caption, make_dataset, render, sample_scenes


def partner(scene: Attributes, rng: np.random.Generator) -> Attributes:
    """The scene with one colour fact changed, in the train split."""
    if scene.striped:
        swapped = dataclasses.replace(scene, color=scene.color2, color2=scene.color)
        if rng.random() < 0.5 and not swapped.heldout:
            return swapped
        others = [c for c in COLORS if c not in (scene.color, scene.color2)]
        return dataclasses.replace(scene, color2=others[rng.integers(len(others))])
    others = [c for c in COLORS if c != scene.color and not Attributes(scene.shape, c).heldout]
    return dataclasses.replace(scene, color=others[rng.integers(len(others))])


def paired_batch(pairs: int):
    def training_batch(data, config, step, image_size=32, offset=0, partial=False):
        assert data is None and distributed.world_size() == 1
        seed = config.seed * 1_000_003 + step + offset
        rest = make_dataset(config.batch_size - 2 * pairs, "train", partial=partial, seed=seed, image_size=image_size)
        rng = np.random.default_rng(seed + 7_777_777)
        firsts = sample_scenes(pairs, "train", rng)
        scenes = [s for first in firsts for s in (first, partner(first, rng))]
        images = render(scenes, seed=int(rng.integers(2**31)), image_size=image_size)
        return torch.cat([rest.images, images]), list(rest.captions) + [caption(s) for s in scenes]
    return training_batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=CLIP_TRAIN.steps)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    minidalle.sources.training_batch = paired_batch(args.pairs)
    config = dataclasses.replace(CLIP_TRAIN, steps=args.steps, save_every=args.steps, eval_every=args.steps)
    model, trainer = train_clip(config=config, out=Path(args.out) / "clip", force=True, progress=False)
    print({k: round(v, 4) if isinstance(v, float) else v for k, v in trainer.metrics.items()},
          f"{trainer.seconds:.0f} s")


if __name__ == "__main__":
    main()
