"""Issue 17: two checkpoint folders on `make bench`'s own 512 prompts, prompt by prompt.

    python benchmarks/exp17/paired_bench.py BASELINE_DIR CANDIDATE_DIR [--threads 2] [--n 512] [--out JSON]

Draws the pipeline section's prompts (minidalle.evaluate.evaluation_prompts(n, seed=0)) with each
folder's pipeline (pipe.generate(seed=0), default settings, as bench_pipeline does), judges them
with BASELINE_DIR's judge and prints, for seen and held-out prompts, "every attribute right" and
the stripe colour with 95 % Wilson intervals, then the paired difference CANDIDATE - BASELINE of
"every attribute right" and of the stripe colour (striped prompts) with a 95 % bootstrap interval
over the prompts. When the two folders share a prior, the two pipelines decode the same prior
embeddings, so the difference is the decoders' alone. --out writes both folders' per-prompt
outcomes as strings of 0/1/- (every attribute right; each attribute, "-" where the prompt does not ask
for it) with a held-out mask, for a notebook to recompute the figures from.
"""
import argparse
import json
from pathlib import Path

import numpy as np
import torch

from minidalle.evaluate import (SCORED, _asked, _checks, bootstrap_interval, evaluation_prompts, format_interval,
                                load_judge, wilson_interval)
from minidalle.pipeline import UnCLIP
from minidalle.world import HELDOUT


def outcomes(folder, prompts, judge):
    """Per prompt: (held-out?, {"all": every attribute right?, attribute: right? or None when not asked})."""
    pipe = UnCLIP.from_pretrained(folder)
    judged = judge.predict(pipe.generate(prompts, seed=0))
    rows = []
    for pred, want in zip(judged, _asked(judged, prompts)):
        checks = _checks(pred, want)
        rows.append(((want.shape, want.color) in HELDOUT,
                     {"all": all(checks.values()), **{name: checks.get(name) for name in SCORED}}))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("baseline")
    parser.add_argument("candidate")
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the per-prompt outcomes to this JSON")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    prompts, _, _ = evaluation_prompts(args.n, 0)
    judge = load_judge(f"{args.baseline}/judge")
    a, b = outcomes(args.baseline, prompts, judge), outcomes(args.candidate, prompts, judge)
    for group, held in (("seen", False), ("held-out", True)):
        for name, key in (("every attribute right", "all"), ("stripe colour", "color2")):
            pairs = [(x[1][key], y[1][key]) for x, y in zip(a, b) if x[0] == held and x[1][key] is not None]
            base, cand = np.array(pairs, dtype=float).T  # (2, prompts)
            lo, hi = bootstrap_interval(cand - base)
            rate = {run: format_interval(x.mean(), wilson_interval(int(x.sum()), len(x))) for run, x in
                    (("baseline", base), ("candidate", cand))}
            print(f"{group:<9} {name:<22} baseline {rate['baseline']}  candidate {rate['candidate']}"
                  f"  paired diff {(cand - base).mean():+.3f} [{lo:+.3f}, {hi:+.3f}]  ({len(base)} prompts)")
    if args.out:
        code = {True: "1", False: "0", None: "-"}
        Path(args.out).write_text(json.dumps({
            "prompts": "minidalle.evaluate.evaluation_prompts(%d, seed=0), pipe.generate(seed=0)" % args.n,
            "heldout": "".join(code[x[0]] for x in a),
            **{f"{who}_{key}": "".join(code[x[1][key]] for x in rows)
               for who, rows in (("baseline", a), ("candidate", b)) for key in ("all",) + SCORED},
            "baseline_dir": args.baseline, "candidate_dir": args.candidate}, indent=1) + "\n")
    both = np.array([(x[1]["all"], y[1]["all"]) for x, y in zip(a, b)], dtype=float).T  # (2, prompts)
    lo, hi = bootstrap_interval(both[1] - both[0])
    print(f"all       every attribute right paired diff {(both[1] - both[0]).mean():+.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
