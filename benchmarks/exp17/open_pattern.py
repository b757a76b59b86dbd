"""Issue 17 / notebook 08: when a prompt leaves the pattern open ("a square", "a large cross on the left": no
colour word, the only way the world's captions leave it open, since "a red square" means a solid one), which
stage decides whether the image comes out striped, the prior or the decoder?

    python benchmarks/exp17/open_pattern.py [--n 256] [--threads 2]

For n such prompts (a random shape, each of size and position named half of the time; seed 0) the
shipped prior draws one image embedding each. (a) The prior's side: each embedding's 10 nearest
neighbours (cosine) in a bank of 8,192 training renders' CLIP image embeddings vote on "striped";
(a') the same with one prior draw per prompt instead of the default best-of-2 (CLIP-reranked);
(b) the decoder's side: the judge reads whether the decoded image is striped. For reference, (c) the
world's own share of striped scenes among the bank's renders (every scene fits such a prompt), and
(d) the decoder on real striped renders' embeddings (does it draw the stripes it is given?).
95 % Wilson intervals. Prints one table; nothing is saved.

Result (2026-12-01, shipped checkpoints of d37b6c1, 2 threads): (c) 0.491 [0.481, 0.502];
(a) 0.230 [0.183, 0.286]; (a') 0.359 [0.303, 0.420]; (b) 0.176 [0.134, 0.227]; (d) 0.923 [0.867, 0.956].
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from minidalle.evaluate import format_interval, load_judge, wilson_interval  # noqa: E402
from minidalle.pipeline import UnCLIP  # noqa: E402
from minidalle.world import POSITIONS, SHAPES, SIZES, Attributes, caption, make_dataset  # noqa: E402


def share(flags) -> str:
    flags = np.asarray(flags, dtype=bool)
    return f"{format_interval(flags.mean(), wilson_interval(int(flags.sum()), len(flags)), 3)} of {len(flags)}"


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe, judge = UnCLIP.from_pretrained(), load_judge()
    rng = np.random.default_rng(0)
    prompts = []
    for _ in range(args.n):
        size = SIZES[rng.integers(len(SIZES))] if rng.random() < 0.5 else None
        where = POSITIONS[rng.integers(len(POSITIONS))] if rng.random() < 0.5 else None
        prompts.append(caption(Attributes(SHAPES[rng.integers(len(SHAPES))], None, None, None, size, where)))

    bank = make_dataset(8192, "train", seed=99)
    bank_z = pipe.clip.encode_image(bank.images)  # (N, E) unit vectors
    bank_striped = np.array([a.striped for a in bank.attributes])

    def vote(z):  # (n, E) -> does the majority of each embedding's 10 nearest renders have stripes?
        neighbours = (z @ bank_z.T).topk(10, dim=1).indices.numpy()  # (n, 10)
        return bank_striped[neighbours].mean(1) > 0.5

    z = pipe.prior_embedding(prompts, seed=0)  # (n, E), the default best-of-2 (CLIP-reranked)
    z1 = pipe.prior_embedding(prompts, seed=0, best_of=1)  # one draw each, no reranking
    drawn = [r.striped for r in judge.predict(pipe.decoder.sample(z, seed=0))]
    world = bank_striped  # every training scene fits a prompt that names only shape, size and position

    striped_renders = make_dataset(256, "train", seed=5)
    keep = [i for i, a in enumerate(striped_renders.attributes) if a.striped]
    real_z = pipe.clip.encode_image(striped_renders.images[keep])
    redrawn = [r.striped for r in judge.predict(pipe.decoder.sample(real_z, seed=0))]

    print(f"{args.n} prompts without a colour word (e.g. {prompts[0]!r}), the pattern left open; share striped:")
    print(f"  (c) the world: training renders                       {share(world)}")
    print(f"  (a) prior embeddings, 10-nearest-render vote          {share(vote(z))}")
    print(f"  (a') the same, one prior draw each (best_of=1)        {share(vote(z1))}")
    print(f"  (b) prior embeddings decoded, read by the judge        {share(drawn)}")
    print(f"  (d) real striped renders' embeddings decoded (judge)   {share(redrawn)}")


if __name__ == "__main__":
    main()
