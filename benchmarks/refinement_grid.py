"""Notebook 10's experiment: what to tune, how much data, what replay buys, and what it forgets.

A reduced grid (one pair of new words, star and pink, one seed, LoRA rank 4 but for the rank rows
1 and 16 at N = 1,000), one process per recipe so that they run side by side on a shared machine:

    python benchmarks/refinement_grid.py --train NAME   # each of NAMES, and dec200 (the decoder stage alone)
    python benchmarks/refinement_grid.py --combine --ship data/checkpoints/refine_star_pink
    python benchmarks/refinement_grid.py --eval NAME    # each of ORDER ("before": nothing trained)
    python benchmarks/refinement_grid.py --collect      # -> benchmarks/refinement_grid.json

--combine makes the N = 200 rows that share tp200's trained text side and prior: text alone, and
text + prior + the decoder stage dec200 trained on its own (the decoder learns image embedding ->
image, which does not depend on the text side), the `finetune` default recipe, shipped.
Every row is judged on the same prompts (evaluate_refinement, seed 0): N_NEW fresh full captions
naming a new word, and N_OLD old prompts (half seen, half held-out compositions), drawn with
STEPS DDIM steps (fewer than the decoder's default, to fit the CPU budget; every row alike).
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
from minidalle.refine_eval import evaluate_refinement  # noqa: E402

N_NEW, N_OLD, STEPS = 48, 48, 10  # 10 DDIM steps: notebook 06 measured the same judge accuracy as 100
OUT = HERE / "refinement_grid.json"


def _strip(scores: dict) -> dict:
    """JSON-friendly scores: intervals as lists, no images."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in scores.items() if k not in ("images", "prompts")}


NAMES = {  # one process each, side by side (CPU share is per process on a shared machine)
    "tp200": dict(examples=200, stages=("text", "prior")), "tp50": dict(examples=50, stages=("text", "prior")),
    "tp1000": dict(examples=1000, stages=("text", "prior")),
    "tp1000_noreplay": dict(examples=1000, stages=("text", "prior"), replay=False),
    "tp1000_full": dict(examples=1000, stages=("text", "prior"), rank=0),
    "tp1000_r1": dict(examples=1000, stages=("text", "prior"), rank=1),  # alpha stays 4 (Hu et al.)
    "tp1000_r16": dict(examples=1000, stages=("text", "prior"), rank=16),
}


def _data(clip):
    from minidalle.refine import Recipe, refine_data

    return refine_data(clip, Recipe(examples=1000))  # one pool (a smaller N: its first N) and one replay bank


def train_one(name: str, folder: Path) -> None:
    """Train one recipe of NAMES (or "dec200": the decoder stage of the N = 200 recipe alone) and save it."""
    from minidalle.pipeline import UnCLIP
    from minidalle.refine import PREFIX, Recipe, _train_decoder, prepare, refine, save_refinement, trainable_state
    from minidalle.refine_eval import _first

    torch.set_num_threads(1)
    folder.mkdir(parents=True, exist_ok=True)
    pipe = UnCLIP.from_pretrained()
    data = _data(pipe.clip)
    if name == "dec200":  # the decoder learns (image embedding -> image): it does not depend on the text side
        recipe = Recipe(examples=200)
        prepare(pipe, recipe)
        start = time.process_time()
        losses = _train_decoder(pipe, _first(data, 200), recipe, progress=False)
        seconds = round(time.process_time() - start, 1)
        from safetensors.torch import save_file
        save_file({k: v.detach().contiguous() for k, v in trainable_state(pipe).items() if k.startswith(PREFIX["decoder"])},
                  str(folder / "dec200.safetensors"))
        (folder / "dec200.json").write_text(json.dumps({"cpu_seconds": seconds, "losses": losses}))
        return
    recipe = Recipe(**NAMES[name])
    info = refine(pipe, recipe, data=_first(data, recipe.examples), progress=False)
    metrics = {key: info[key] for key in ("base", "cpu_seconds", "trainable_parameters", "losses")}
    metrics["torch_threads"] = torch.get_num_threads()
    save_refinement(pipe, recipe, folder / name, metrics, force=True)


def combine(folder: Path, ship: Path | None) -> None:
    """The N = 200 rows that reuse tp200's stages: text alone, and text + prior + dec200's decoder (shipped)."""
    from safetensors.torch import load_file

    from minidalle.pipeline import UnCLIP
    from minidalle.refine import Recipe, _load, count_parameters_of, finish, prepare, save_refinement, trainable_state

    tp = json.loads((folder / "tp200.json").read_text())["metrics"]
    dec = json.loads((folder / "dec200.json").read_text())
    tensors = load_file(str(folder / "tp200.safetensors")) | load_file(str(folder / "dec200.safetensors"))
    for name, recipe in [("t200", Recipe(examples=200, stages=("text",))), ("tpd200", Recipe(examples=200))]:
        pipe = prepare(UnCLIP.from_pretrained(), recipe)
        n, wanted = count_parameters_of(pipe), trainable_state(pipe)
        missing = set(wanted) - set(tensors)
        if missing:
            raise ValueError(f"{name}: no trained tensors for {sorted(missing)[:3]}")
        _load(pipe, {k: v for k, v in tensors.items() if k in wanted})
        finish(pipe)
        stages = recipe.stages
        metrics = {"base": tp["base"], "trainable_parameters": n, "torch_threads": 1,
                   "cpu_seconds": {s: dec["cpu_seconds"] if s == "decoder" else tp["cpu_seconds"][s] for s in stages},
                   "losses": {s: dec["losses"] if s == "decoder" else tp["losses"][s] for s in stages}}
        save_refinement(pipe, recipe, folder / name, metrics, force=True)
        if name == "tpd200" and ship is not None:
            save_refinement(pipe, recipe, ship, metrics)  # refuses to overwrite a shipped one


def eval_one(name: str, folder: Path) -> None:
    """Judge one saved refinement (or "before": new rows, nothing trained); writes folder/row_<name>.json."""
    from minidalle.evaluate import load_judge
    from minidalle.pipeline import UnCLIP
    from minidalle.refine import Recipe, load_refinement, prepare

    torch.set_num_threads(1)
    judge_path = CHECKPOINT_DIR / "judge_extended.safetensors"
    while not judge_path.exists():  # trained alongside (finetune --judge)
        time.sleep(10)
    time.sleep(5)
    judge = load_judge(extended=True)
    if name == "before":
        pipe = prepare(UnCLIP.from_pretrained(), Recipe(stages=("text",)))
        for module in (pipe.clip, pipe.prior, pipe.decoder):
            module.eval()
        row = {"label": "before (new rows, nothing trained)", "recipe": None, "trainable_parameters": 0,
               "cpu_seconds": 0.0, "adapter_bytes": 0}
    else:
        pipe = load_refinement(folder / name)
        recipe, metrics = pipe.recipe, pipe.refinement_metrics
        size = sum(path.stat().st_size for path in (folder / f"{name}.json", folder / f"{name}.safetensors"))
        row = {"label": recipe.describe(), "recipe": recipe.__dict__ | {"words": list(recipe.words),
                                                                        "stages": list(recipe.stages)},
               "trainable_parameters": metrics["trainable_parameters"],
               "cpu_seconds": round(sum(metrics["cpu_seconds"].values()), 1),
               "cpu_seconds_per_stage": metrics["cpu_seconds"], "adapter_bytes": size}
    scores = evaluate_refinement(pipe, judge, pipe.world, N_NEW, N_OLD, 0, STEPS)
    (folder / f"row_{name}.json").write_text(json.dumps(row | _strip(scores), indent=1))


ORDER = ["before", "tpd200", "tp200", "t200", "tp50", "tp1000", "tp1000_noreplay", "tp1000_full", "tp1000_r1",
         "tp1000_r16"]


def collect(folder: Path) -> None:
    rows = [json.loads((folder / f"row_{name}.json").read_text()) for name in ORDER]
    settings = {"n_new": N_NEW, "n_old": N_OLD, "ddim_steps": STEPS, "seed": 0, "torch_threads": 1,
                "command": "python benchmarks/refinement_grid.py --train NAME (each of NAMES and dec200, side by "
                           "side), --combine, --eval NAME (each of ORDER), --collect"}
    OUT.write_text(json.dumps({"settings": settings, "rows": rows}, indent=1) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", choices=[*NAMES, "dec200"])
    parser.add_argument("--combine", action="store_true")
    parser.add_argument("--eval", choices=ORDER)
    parser.add_argument("--collect", action="store_true")
    parser.add_argument("--folder", default=str(HERE.parent / "data" / "runs" / "refinement_grid"))
    parser.add_argument("--ship", default=None, help="where --combine writes the N = 200 refinement")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if args.train:
        train_one(args.train, folder)
    elif args.combine:
        combine(folder, Path(args.ship) if args.ship else None)
    elif args.eval:
        eval_one(args.eval, folder)
    elif args.collect:
        collect(folder)
    else:
        parser.error("give --train NAME, --combine, --eval NAME or --collect")
    return 0


if __name__ == "__main__":
    sys.exit(main())
