"""Notebook 10's experiment: what to tune, how much data, what replay buys, and what it forgets.

A reduced grid (one pair of new words, star and pink, one seed, one LoRA rank), in two parts that
can run side by side, each training its recipes and then judging them:

    python benchmarks/refinement_grid.py --part a      # text+prior, N = 1000, replay or not
    python benchmarks/refinement_grid.py --part b      # N = 200: text / +prior / +decoder (the finetune default)
    python benchmarks/refinement_grid.py --part c      # before; text+prior, N = 50; full fine-tuning at N = 1000
    python benchmarks/refinement_grid.py --collect     # -> benchmarks/refinement_grid.json

Every row is judged on the same prompts (evaluate_refinement, seed 0): N_NEW fresh full captions
naming a new word, and N_OLD old prompts (half seen, half held-out compositions), drawn with
STEPS DDIM steps (fewer than the decoder's default, to fit the CPU budget; every row alike).
Part b also writes the N = 200 recipe's refinement (the `finetune` default) to --ship.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

import torch  # noqa: E402

from minidalle import CHECKPOINT_DIR  # noqa: E402

N_NEW, N_OLD, STEPS = 48, 48, 10  # 10 DDIM steps: notebook 06 measured the same judge accuracy as 100
OUT = HERE / "refinement_grid.json"


def recipes(part: str) -> list:
    """The recipes of one part (the default Recipe: star and pink, LoRA rank 4, replay, seed 0)."""
    from minidalle.refine import Recipe

    if part == "a":  # text side + prior only: the decoder's steps cost far more than the CPU budget allowed
        return [Recipe(examples=1000, stages=("text", "prior")),
                Recipe(examples=1000, stages=("text", "prior"), replay=False)]
    if part == "c":
        return [Recipe(examples=50, stages=("text", "prior")), Recipe(examples=1000, stages=("text", "prior"), rank=0)]
    # all three stages (the `finetune` default, shipped), then the same text side and prior alone (cached)
    return [Recipe(examples=200), Recipe(examples=200, stages=("text", "prior")), Recipe(examples=200, stages=("text",))]


def _strip(scores: dict) -> dict:
    """JSON-friendly scores: intervals as lists, no images."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in scores.items() if k not in ("images", "prompts")}


def run_part(part: str, folder: Path, ship: Path | None) -> None:
    """Train the part's recipes (saving each refinement in folder), then judge each."""
    from minidalle.evaluate import load_judge
    from minidalle.pipeline import UnCLIP
    from minidalle.refine import load_refinement, prepare, refine, refine_data, save_refinement
    from minidalle.refine_eval import _first, adapter_bytes, evaluate_refinement

    torch.set_num_threads(1)
    folder.mkdir(parents=True, exist_ok=True)
    todo = recipes(part)
    data, cache, trained = None, {}, []
    for i, recipe in enumerate(todo):
        saved = folder / f"{part}{i}"
        if saved.with_suffix(".json").exists():  # trained by an earlier run: judge it only
            meta = json.loads(saved.with_suffix(".json").read_text())
            size = sum(path.stat().st_size for path in (saved.with_suffix(".json"), saved.with_suffix(".safetensors")))
            trained.append((recipe, meta["metrics"], size))
            continue
        pipe = UnCLIP.from_pretrained()
        if data is None:  # one pool (the first N of 1000 examples) and one replay bank for all
            data = refine_data(pipe.clip, recipe.__class__(examples=1000))
        info = refine(pipe, recipe, data=_first(data, recipe.examples), cache=cache, progress=False)
        metrics = {key: info[key] for key in ("base", "cpu_seconds", "trainable_parameters", "losses")}
        metrics["torch_threads"] = torch.get_num_threads()
        save_refinement(pipe, recipe, saved, metrics, force=True)
        if ship is not None and part == "b" and i == 0:
            save_refinement(pipe, recipe, ship, metrics)  # refuses to overwrite a shipped one
        trained.append((recipe, metrics, adapter_bytes(pipe, recipe)))
    judge_path = CHECKPOINT_DIR / "judge_extended.safetensors"
    while not judge_path.exists():  # trained alongside (finetune --judge)
        time.sleep(10)
    time.sleep(5)
    judge = load_judge(extended=True)
    rows = []
    if part == "c":
        before = prepare(UnCLIP.from_pretrained(), todo[0].__class__(stages=("text",)))
        for module in (before.clip, before.prior, before.decoder):
            module.eval()
        scores = evaluate_refinement(before, judge, before.world, N_NEW, N_OLD, 0, STEPS)
        rows.append({"label": "before (new rows, nothing trained)", "recipe": None, "trainable_parameters": 0,
                     "cpu_seconds": 0.0, "adapter_bytes": 0} | _strip(scores))
    for i, (recipe, metrics, size) in enumerate(trained):
        pipe = load_refinement(folder / f"{part}{i}")
        scores = evaluate_refinement(pipe, judge, pipe.world, N_NEW, N_OLD, 0, STEPS)
        rows.append({"label": recipe.describe(), "recipe": recipe.__dict__ | {"words": list(recipe.words),
                                                                              "stages": list(recipe.stages)},
                     "trainable_parameters": metrics["trainable_parameters"],
                     "cpu_seconds": round(sum(metrics["cpu_seconds"].values()), 1),
                     "cpu_seconds_per_stage": metrics["cpu_seconds"], "adapter_bytes": size} | _strip(scores))
        (folder / f"rows_{part}.json").write_text(json.dumps(rows, indent=1))


def collect(folder: Path) -> None:
    rows = []
    for part in ("c", "b", "a"):
        rows += json.loads((folder / f"rows_{part}.json").read_text())
    settings = {"n_new": N_NEW, "n_old": N_OLD, "ddim_steps": STEPS, "seed": 0, "torch_threads": 1,
                "command": "python benchmarks/refinement_grid.py --part a, --part b, --part c (side by side), then --collect"}
    OUT.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["a", "b", "c"])
    parser.add_argument("--collect", action="store_true")
    parser.add_argument("--folder", default=str(HERE.parent / "data" / "runs" / "refinement_grid"))
    parser.add_argument("--ship", default=None, help="where part b writes the N = 200 refinement")
    args = parser.parse_args(argv)
    if args.collect:
        collect(Path(args.folder))
    elif args.part:
        run_part(args.part, Path(args.folder), Path(args.ship) if args.ship else None)
    else:
        parser.error("give --part a, b or c, or --collect")
    return 0


if __name__ == "__main__":
    sys.exit(main())
