"""Issue 17: what shape two checkpoint folders draw for the striped yellow circles of `make bench`'s prompts.

    python benchmarks/exp17/held_out_shapes.py BASELINE_DIR CANDIDATE_DIR [--threads 2]

The linear noise schedule lost 15 held-out shapes on the bench's 512 prompts, 13 of them striped
yellow circles (a held-out pair; benchmarks/exp17/linear_schedule_bench.json). This draws the bench's
images as the bench does (pipe.generate over all 512 prompts, seed 0, so every image has the noise it
has there), keeps the striped yellow circles and counts the shapes the judge reads in each folder.
"""
import argparse
from collections import Counter

import torch

from minidalle.evaluate import evaluation_prompts, load_judge
from minidalle.pipeline import UnCLIP
from minidalle.world import parse_prompt


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs=2)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts = evaluation_prompts(512, 0)[0]
    keep = [i for i, p in enumerate(prompts)
            if (a := parse_prompt(p)).shape == "circle" and a.color == "yellow" and a.striped]
    judge = load_judge(f"{args.folders[0]}/judge")
    for folder in args.folders:
        images = UnCLIP.from_pretrained(folder).generate(prompts, seed=0)[keep]  # (k, 3, 32, 32)
        shapes = Counter(found.shape for found in judge.predict(images))
        print(f"{folder}: {len(keep)} striped yellow circles, shapes read: {dict(shapes.most_common())}")


if __name__ == "__main__":
    main()
