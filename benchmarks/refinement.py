"""Benchmark section: the default refinement recipe of notebook 10 (data/checkpoints/refine_star_pink).

New-concept accuracy through the whole pipeline and forgetting on the old prompts (before and after,
95 % Wilson intervals), and what the refinement cost: CPU seconds of training (from its JSON), its
size on disk, its trainable parameters. Run by `benchmarks/run.py` (section "refinement"), or alone:
`python benchmarks/refinement.py [--quick] [--checkpoints DIR]` prints the rows.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from minidalle import CHECKPOINT_DIR, checkpoints  # noqa: E402

NAME = "refine_star_pink"
MAKE = {NAME: "python -m minidalle finetune --concept star pink --examples 200",
        "judge_extended": "python -m minidalle finetune --concept star pink --judge"}


def missing(folder: Path) -> str | None:
    """A note naming the first missing checkpoint and the command that makes it, or None."""
    for name in ("clip", "prior", "decoder", "judge_extended", NAME):
        for path in checkpoints.paths(folder / name):
            if not path.exists():
                return f"missing checkpoint {path.name} ({MAKE.get(name, f'python -m minidalle train {name}')})"
    return None


def _ci(scores: dict, key: str) -> str:
    lo, hi = scores[f"{key}_ci"]
    return f"{scores[key]:.3f} [{lo:.2f}, {hi:.2f}] of {scores[key + '_k']}"


def bench(folder: Path, quick: bool) -> list[dict]:
    """Rows {figure, value, target, how, unit} for benchmarks/run.py's figure()."""
    import torch

    from minidalle.evaluate import evaluation_prompts, load_judge, score_prompts
    from minidalle.pipeline import UnCLIP
    from minidalle.refine import load_refinement
    from minidalle.refine_eval import evaluate_refinement

    n = 64 if quick else 256
    judge = load_judge(folder / "judge_extended", extended=True)
    pipe = load_refinement(folder / NAME, base=folder)
    world, recipe, meta = pipe.world, pipe.recipe, pipe.refinement_metrics
    after = evaluate_refinement(pipe, judge, world, n_new=n, n_old=n, seed=0)
    prompts, _, _ = evaluation_prompts(n, seed=0)
    base = UnCLIP.from_pretrained(folder)
    with torch.no_grad():
        before = score_prompts(judge.predict(base.generate(prompts, seed=0)), prompts, intervals=True)
    total = sum(p.numel() for m in (base.clip, base.prior, base.decoder) for p in m.parameters())
    weights, meta_json = checkpoints.paths(folder / NAME)
    size_kb = (weights.stat().st_size + meta_json.stat().st_size) / 1024
    how = (f"{n} fresh full captions naming {' or '.join(recipe.words)} ({recipe.describe()}), generated with the "
           f"default settings, read by judge_extended; 95 % Wilson interval and count")
    rows = [dict(figure="refinement: new concept drawn", value=after["new_concept"], target=">= 0.5",
                 how=f"{how}: {_ci(after, 'new_concept')}"),
            dict(figure="refinement: new-concept prompts all right", value=after["new_all"], target=None,
                 how=f"every attribute right (compositions with old attributes): {_ci(after, 'new_all')}")]
    rows += [dict(figure=f"refinement: new word '{w}' drawn", value=after[f"new_{w}"], target=None,
                  how=f"among the prompts naming it: {_ci(after, f'new_{w}')}") for w in recipe.words]
    for group in ("seen", "heldout"):
        key = f"{group}_all"
        rows.append(dict(figure=f"refinement: forgetting, old {group} prompts all right (before - after)",
                         value=before[key] - after[f"old_{key}"], target="<= 0.1",
                         how=f"{n // 2} old {group} prompts (evaluate.evaluation_prompts), same seeds; before "
                             f"{_ci(before, key)}, after {_ci(after, 'old_' + key)}"))
    rows += [dict(figure="refinement: training CPU seconds", value=float(sum(meta["cpu_seconds"].values())),
                  target="<= 900", unit="s", how=f"{NAME}.json cpu_seconds (process CPU time, "
                                                  f"{meta.get('torch_threads', '?')} threads): {meta['cpu_seconds']}"),
             dict(figure="refinement: size on disk (kB)", value=size_kb, target=None,
                  how=f"{NAME}.safetensors + .json: new rows and LoRA adapters only"),
             dict(figure="refinement: trainable parameters", value=meta.get("trainable_parameters"), target=None,
                  how=f"new embedding rows + adapters, of {total:,} weights in the three stages")]
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--checkpoints", default=str(CHECKPOINT_DIR))
    args = parser.parse_args(argv)
    note = missing(Path(args.checkpoints))
    if note:
        print(note, file=sys.stderr)
        return 1
    for row in bench(Path(args.checkpoints), args.quick):
        print(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
