"""Issue 17: the decoder's own ceiling: the shipped recipe conditioned on the true attributes.

    python benchmarks/exp17/oracle_decoder.py NAME [STEPS] [--threads 1]

Trains the shipped decoder recipe (standardized U-Net, DECODER_TRAIN) with one change: each
training render is conditioned not on its CLIP image embedding but on a 64-number code of its
attributes (one-hot shape, colour, stripe colour or "solid", size, position, zero-padded), read
off the render by the judge (which reads fresh renders right ≥ 99.7 % of the time). Then decodes
run_decoder.py's 256 prompts from the code of their own attributes and judges the images.

If this decoder draws the stripe colour near-perfectly, the decoder's architecture and budget are
not what loses it: the CLIP embedding is (it holds the stripe colour only non-linearly, probe.py).
If it also fails, the decoder is the bottleneck. Appends a row to results.jsonl (source "oracle").
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import numpy as np
import torch

import minidalle
from minidalle.decoder import DecoderConfig, load_decoder
from minidalle.evaluate import evaluation_prompts, load_judge
from minidalle.train import DECODER_TRAIN, train_decoder
from minidalle.unet import UNetConfig
from minidalle.world import COLORS, POSITIONS, SHAPES, SIZES, parse_prompt
from run_decoder import append_row, per_prompt, record

E = 64


def code(attributes) -> torch.Tensor:
    """Full Attributes -> (N, 64) one-hot codes, unit length like a CLIP embedding."""
    out = torch.zeros(len(attributes), E)
    for i, a in enumerate(attributes):
        at = 0
        for value, values in ((a.shape, SHAPES), (a.color, COLORS), (a.color2, (None,) + COLORS),
                              (a.size, SIZES), (a.position, POSITIONS)):
            out[i, at + values.index(value)] = 1.0
            at += len(values)
    return torch.nn.functional.normalize(out, dim=1)


class Oracle:
    """Stands in for CLIP in train_decoder: encode_image reads the attributes with the judge."""

    config = type("Config", (), {"embed_dim": E})()
    device = torch.device("cpu")

    def __init__(self):
        self.judge = load_judge()

    def eval(self):
        return self

    def requires_grad_(self, flag):
        return self

    def encode_image(self, images):
        return code(self.judge.predict(images))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("steps", type=int, nargs="?", default=DECODER_TRAIN.steps)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = DecoderConfig(unet=UNetConfig(embed_dim=E))
    recipe = dataclasses.replace(DECODER_TRAIN, steps=args.steps, eval_every=10**9, save_every=args.steps)
    out = minidalle.DATA_DIR / "runs" / "exp17" / args.name
    start = time.perf_counter()
    train_decoder(Oracle(), config, recipe, out=out, force=True, progress=False)
    seconds = time.perf_counter() - start
    decoder, judge = load_decoder(out), load_judge()
    prompts, _, _ = evaluation_prompts(256, seed=0)
    with torch.no_grad():
        judged = judge.predict(decoder.sample(code([parse_prompt(p) for p in prompts]), seed=0))
    row = {"name": args.name, "steps": args.steps, "standardize": True, "condition": "true attributes",
           "threads": args.threads, "batch": recipe.batch_size, "lr": recipe.lr, "train_seconds": round(seconds, 1),
           "prompts": len(prompts)}
    record(row, "oracle", per_prompt(judged, prompts))
    append_row(row)


if __name__ == "__main__":
    main()
