"""Issue 17: where the time of `generate` (16 prompts, shipped checkpoints, default settings) goes.

    python benchmarks/exp17/generate_time.py [THREADS]

Median of 3 of each: the whole call, the prior at 50 / 16 / 8 DDIM steps (best of 2), the decoder
at 16 / 8 DDIM steps (guidance 2: two U-Net passes a step).
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/run.py
from run import median_seconds  # noqa: E402

from minidalle.pipeline import UnCLIP  # noqa: E402
from minidalle.world import make_dataset  # noqa: E402


def main():
    torch.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 2)
    pipe = UnCLIP.from_pretrained()
    prompts = make_dataset(16, "train", seed=3).captions
    with torch.no_grad():
        embeddings, text = pipe.prior_embedding(prompts, seed=0), pipe.text_embedding(prompts)
        print(f"generate, default settings: {median_seconds(lambda: pipe.generate(prompts, seed=0), 3):.3f} s")
        for steps in (50, 16, 8):
            s = median_seconds(lambda: pipe.prior.sample(text, seed=0, steps=steps), 3)
            print(f"prior, {steps} steps, best of 2: {s:.3f} s")
        for steps in (16, 8):
            s = median_seconds(lambda: pipe.decoder.sample(embeddings, seed=0, steps=steps), 3)
            print(f"decoder, {steps} steps: {s:.3f} s")


if __name__ == "__main__":
    main()
