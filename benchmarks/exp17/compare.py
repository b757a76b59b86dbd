"""Paired comparison of issue 17's proxy runs (benchmarks/exp17/results.jsonl, from run_decoder.py).

    python benchmarks/exp17/compare.py [BASELINE]      # default baseline: base1k

For each run: "every attribute right" on the run's prompts (seen / held-out), and its difference
from BASELINE prompt by prompt (same prompts, same seeds), with a 95 % bootstrap interval over the
prompts (minidalle.evaluate.bootstrap_interval), for the real images' embeddings and the prior's
(oracle_decoder.py's runs, decoded from the true attributes' code: against BASELINE's real embeddings).
"""
import json
import sys
from pathlib import Path

import numpy as np

from minidalle.evaluate import bootstrap_interval

HERE = Path(__file__).resolve().parent


def main():
    runs = {}
    for line in (HERE / "results.jsonl").read_text().splitlines():
        row = json.loads(line)
        runs[row["name"]] = row  # the latest run of a name counts
    base = runs[sys.argv[1] if len(sys.argv) > 1 else "base1k"]
    w = max(len(name) for name in runs) + 2  # the run column
    print(f"{'run':<{w}}{'source':<7}{'all right seen / held-out':>28}{'stripe colour seen / held-out':>32}"
          f"{'paired diff vs ' + base['name'] + ' [95 %]':>36}")
    for name, row in runs.items():
        for source in [s for s in ("real", "prior", "oracle") if f"{s}_outcomes" in row]:
            a = np.array([int(c) for c in row[f"{source}_outcomes"]])
            b = np.array([int(c) for c in base[f"{source}_outcomes" if f"{source}_outcomes" in base else "real_outcomes"]])
            lo, hi = bootstrap_interval(a - b)
            print(f"{name:<{w}}{source:<7}{row[f'{source}_seen_all']:>16.3f} / {row[f'{source}_heldout_all']:.3f}"
                  f"{row[f'{source}_seen_color2']:>21.3f} / {row[f'{source}_heldout_color2']:.3f}"
                  f"{(a - b).mean():>+22.3f} [{lo:+.3f}, {hi:+.3f}]")


if __name__ == "__main__":
    main()
