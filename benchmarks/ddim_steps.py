"""How many DDIM steps the decoder needs: the shipped pipeline at 50, 25, 16, 10 and 8 steps.

Usage: `python benchmarks/ddim_steps.py [--out FILE]` (default benchmarks/ddim_steps.json; one thread,
about 25 minutes on a slow 2-core machine). The bench's prompt set (512 fresh full prompts, seed 0),
the prior's embeddings drawn once, then decoded from the same noise (seed 0) at each step count and read
by the judge. Each step count is compared with 50 steps prompt by prompt: the paired difference in
"every attribute right" with a 95 % bootstrap interval (4,000 resamples of the prompts). Notebook 06
(section 7) prints the table; the decoder's default (DecoderConfig.steps) was chosen from it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from minidalle.evaluate import _asked, _checks, bootstrap_interval, evaluation_prompts, load_judge, score_prompts  # noqa: E402
from minidalle.pipeline import UnCLIP  # noqa: E402
from minidalle.world import make_dataset  # noqa: E402

STEP_COUNTS = (50, 25, 16, 10, 8)  # 50 first: every other count is compared with it


def paired_difference(ok: np.ndarray, reference: np.ndarray, resamples: int = 4000, seed: int = 0):
    """Mean of ok - reference (per prompt, 0/1) and its 95 % bootstrap interval over prompts."""
    d = ok.astype(int) - reference.astype(int)
    return float(d.mean()), list(bootstrap_interval(d, resamples=resamples, seed=seed))


@torch.no_grad()
def measure(n: int = 512) -> dict:
    torch.set_num_threads(1)
    pipe, judge = UnCLIP.from_pretrained(), load_judge()
    prompts, _, _ = evaluation_prompts(n, 0)
    z = pipe.prior_embedding(prompts, seed=0)  # (n, E): one draw, shared by every step count
    timing_prompts = make_dataset(16, "train", seed=123).captions
    out, per_prompt = {}, {}
    for steps in STEP_COUNTS:
        start = time.perf_counter()
        images = pipe.decode(z, seed=0, steps=steps)
        seconds = time.perf_counter() - start
        judged = judge.predict(images)
        per_prompt[steps] = np.array([all(_checks(p, a).values()) for p, a in zip(judged, _asked(judged, prompts))])
        scores = score_prompts(judged, prompts, intervals=True)
        row = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in scores.items()
               if k.endswith(("_all", "_color2", "_all_ci", "_color2_ci", "_shape", "_color", "_striped"))}
        times = []
        for _ in range(3):
            start16 = time.perf_counter()
            pipe.generate(timing_prompts, seed=0, steps=steps)
            times.append(time.perf_counter() - start16)
        diff, ci = paired_difference(per_prompt[steps], per_prompt[STEP_COUNTS[0]])
        row.update(decode_512_s=round(seconds, 1), gen16_median_s=round(sorted(times)[1], 2),
                   paired_diff_vs_50=round(diff, 4), paired_diff_ci=[round(c, 4) for c in ci],
                   discordant=[int((per_prompt[steps] & ~per_prompt[50]).sum()),  # right only at this count
                               int((~per_prompt[steps] & per_prompt[50]).sum())])  # right only at 50
        out[str(steps)] = row
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(HERE / "ddim_steps.json"))
    args = parser.parse_args(argv)
    Path(args.out).write_text(json.dumps(measure(), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
