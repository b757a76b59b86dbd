"""Issue 17 follow-up: one change to notebook 10's refinement recipe, measured as `make bench` measures the shipped one.

    python benchmarks/exp17/refine_variant.py OUT [FIELD=VALUE ...] [--threads 1]

e.g. `decoder_replay=3`, `decoder_lr=0.004`, `prior_steps=100`, `stages=text+prior`. Trains
minidalle.refine.Recipe(words=("star", "pink"), examples=200, **changes) on the shipped checkpoints (what
`python -m minidalle finetune --concept star pink --examples 200` trains when no field changes), saves
it as OUT/refine_star_pink next to links to the shipped clip, prior, decoder and judge_extended, and
prints benchmarks/refinement.py's rows for OUT: the new concept drawn and the forgetting on 128 seen and
128 held-out old prompts (before - after, same prompts and seeds).
"""
import argparse
import os
import sys
from pathlib import Path

import torch

from minidalle import CHECKPOINT_DIR
from minidalle.pipeline import UnCLIP
from minidalle.refine import Recipe, refine, save_refinement

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import refinement  # noqa: E402  (benchmarks/refinement.py: make bench's refinement section)


def parse_change(text: str, default: Recipe) -> tuple:
    """'decoder_replay=3' -> ('decoder_replay', 3), typed as the recipe's default; 'stages=text+prior' -> a tuple."""
    name, value = text.split("=", 1)
    if name == "stages":
        return name, tuple(value.split("+"))
    old = getattr(default, name)
    return name, float(value) if old is None else type(old)(value)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out")
    parser.add_argument("changes", nargs="*", help="Recipe fields, FIELD=VALUE")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("clip", "prior", "decoder", "judge_extended"):
        for suffix in (".json", ".safetensors"):
            link = out / f"{name}{suffix}"
            if not link.exists():
                os.symlink(CHECKPOINT_DIR / link.name, link)
    recipe = Recipe(words=("star", "pink"), examples=200, **dict(parse_change(c, Recipe()) for c in args.changes))
    pipe = UnCLIP.from_pretrained(CHECKPOINT_DIR)
    info = refine(pipe, recipe)
    metrics = {key: info[key] for key in ("base", "cpu_seconds", "trainable_parameters", "losses")}
    metrics["torch_threads"] = torch.get_num_threads()
    save_refinement(pipe, recipe, out / refinement.NAME, metrics, force=True)
    print(recipe.describe(), info["cpu_seconds"])
    for row in refinement.bench(out, quick=False):
        print(f"{row['figure']}: {row['value']:.4g}  ({row['how']})")


if __name__ == "__main__":
    main()
