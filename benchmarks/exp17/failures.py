"""Issue 17: what kind of failures a decoder makes, and whether CLIP can pick them out.

    python benchmarks/exp17/failures.py NAME [--threads 1]

For the run saved under data/runs/exp17/NAME, on run_decoder.py's 256 prompts at 8 DDIM steps:
(a) seed consistency: the real renders' embeddings decoded with seeds 0, 1, 2, and how many prompts
fail under every seed (a systematic error) or only under some (a sampling accident); which attribute
the judge finds wrong; (b) CLIP re-ranking: from the prior's embeddings, two decodes per prompt
(seeds 0 and 1), keeping the one whose CLIP image embedding is closer to the prompt's text embedding,
against one decode, at 8 and 16 steps.
"""
import argparse
from collections import Counter

import numpy as np
import torch

import minidalle
from minidalle.clip import load_clip
from minidalle.decoder import load_decoder
from minidalle.evaluate import evaluation_prompts, load_judge
from minidalle.pipeline import UnCLIP
from minidalle.prior import load_prior
from minidalle.world import parse_prompt
from run_decoder import group_rates, per_prompt

ATTRIBUTES = ("shape", "color", "striped", "color2", "size", "position")


def summary(judged, prompts):
    """'all right / stripe colour' for the seen half and the held-out half."""
    rates = group_rates(per_prompt(judged, prompts))
    return ", ".join(f"{label} {rates[group][0]:.3f} / {rates[group][1]:.3f}"
                     for group, label in (("seen", "seen"), ("heldout", "held-out")))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip, judge = load_clip(), load_judge()
    decoder = load_decoder(minidalle.DATA_DIR / "runs" / "exp17" / args.name)
    pipe = UnCLIP(clip, load_prior(), decoder)
    prompts, _, real = evaluation_prompts(256, seed=0)
    with torch.no_grad():
        judged = [judge.predict(decoder.sample(clip.encode_image(real), seed=s, steps=8)) for s in range(3)]
        right = np.array([[a for a, _ in per_prompt(j, prompts)] for j in judged])  # (seeds, N)
        print("real embeddings, all right per seed:", ", ".join(f"{r:.3f}" for r in right.mean(1)))
        print(f"prompts wrong under all 3 seeds: {(~right.any(0)).mean():.3f}; "
              f"under some but not all: {((~right).any(0) & right.any(0)).mean():.3f}")
        wrong = Counter(f for got, p in zip(judged[0], prompts) for f in ATTRIBUTES
                        if getattr(got, f) != getattr(parse_prompt(p), f))
        print("wrong attributes, seed 0:", dict(wrong))

        text, embeddings = clip.encode_text(prompts), pipe.prior_embedding(prompts, seed=0)
        for steps in (8, 16):
            candidates = [decoder.sample(embeddings, seed=s, steps=steps) for s in (0, 1)]
            scores = torch.stack([(clip.encode_image(c) * text).sum(-1) for c in candidates])  # (2, N)
            best = torch.where((scores[1] > scores[0])[:, None, None, None], candidates[1], candidates[0])
            print(f"prior, {steps} steps, one decode (all right / stripe colour): "
                  f"{summary(judge.predict(candidates[0]), prompts)}")
            print(f"prior, {steps} steps, best of 2 by CLIP: {summary(judge.predict(best), prompts)}")


if __name__ == "__main__":
    main()
