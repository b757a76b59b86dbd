"""Export -> image folder -> train, against training on the generated world, at equal steps.

Usage: `python benchmarks/folder_roundtrip.py [--clip-steps 400] [--prior-steps 500] [--eval 2048]
[--threads N] [--out DIR] [--folder DIR]`. Writes DIR/folder_roundtrip.json and .md (default DIR:
benchmarks/).

1. `export_world` writes clip-steps x 128 train scenes; chunk k is the batch the world run
   renders at step k, so both runs see the same images (the folder's as 8-bit PNGs).
2. The course's CLIP (default config and recipe, fewer steps) trains once on the world and once
   from the folder the way a user's folder is trained: shuffled, with a vocabulary built from
   its captions. Both are measured on the same fresh held-out renders: caption retrieval and
   zero-shot accuracy with 95 % Wilson intervals.
3. A prior trains on each CLIP (the world's bank of 20,000 renders with fresh caption variants,
   or the folder's images with their one caption each); mean cosine of its sample to the true
   image embedding on held-out captions, with a 95 % bootstrap interval.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from minidalle.clip import ATTRIBUTES, CLIPConfig  # noqa: E402
from minidalle.data import export_world, load_folder  # noqa: E402
from minidalle.evaluate import bootstrap_interval, format_interval, wilson_interval  # noqa: E402
from minidalle.sources import clip_config_for  # noqa: E402
from minidalle.train import CLIP_TRAIN, PRIOR_TRAIN, clip_metrics, train_clip, train_prior  # noqa: E402
from minidalle.world import make_dataset  # noqa: E402

SEED = 20_240_611  # evaluation renders, far from every training seed


def clip_figures(model, n: int) -> dict:
    """Held-out retrieval and zero-shot accuracies, each with its Wilson interval over n images."""
    metrics = clip_metrics(model, n, "heldout", seed=SEED)
    keys = ["heldout_retrieval_top1"] + [f"heldout_zeroshot_{name}" for name in ATTRIBUTES]
    return {key: (metrics[key], wilson_interval(round(metrics[key] * n), n)) for key in keys}


@torch.no_grad()
def prior_figures(prior, clip, n: int) -> dict:
    """Per-caption cosine of the prior's sample (and of the text) to the image embedding, bootstrap intervals."""
    data = make_dataset(n, "heldout", seed=SEED + 1)
    image, text = clip.encode_image(data.images), clip.encode_text(data.captions)
    out = {}
    for name, vector in (("heldout_prior_cosine", prior.sample(text, seed=0)), ("heldout_text_cosine", text)):
        per = (vector * image).sum(-1).numpy()  # (n,)
        out[name] = (float(per.mean()), bootstrap_interval(per))
    return out


def overlap(a: tuple, b: tuple) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip-steps", type=int, default=400, help="CLIP steps (the course recipe: 800)")
    parser.add_argument("--prior-steps", type=int, default=500, help="prior steps (recipe: 2000; 0 skips the prior)")
    parser.add_argument("--eval", type=int, default=2048, help="held-out renders / captions measured")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=str(HERE), help="folder for folder_roundtrip.json and .md")
    parser.add_argument("--folder", default=None, help="where to export (default: a temporary folder)")
    parser.add_argument("--note", default="", help="a line for the report, e.g. how busy the machine was")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    clip_recipe = dataclasses.replace(CLIP_TRAIN, steps=args.clip_steps, eval_every=args.clip_steps,
                                      save_every=args.clip_steps)
    prior_recipe = dataclasses.replace(PRIOR_TRAIN, steps=max(1, args.prior_steps), eval_every=10**9,
                                       save_every=10**9)
    results = {"note": args.note, "clip_steps": args.clip_steps, "prior_steps": args.prior_steps, "batch_size": clip_recipe.batch_size,
               "prior_batch_size": prior_recipe.batch_size,
               "eval": args.eval, "torch_threads": torch.get_num_threads(), "seconds": {}, "figures": {}}
    seconds = results["seconds"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or Path(tmp) / "world")
        start = time.perf_counter()
        export_world(folder, args.clip_steps * clip_recipe.batch_size, seed=clip_recipe.seed,
                     chunk=clip_recipe.batch_size, force=args.folder is not None)
        seconds["export"] = time.perf_counter() - start
        start = time.perf_counter()
        data = load_folder(folder)
        seconds["load"] = time.perf_counter() - start
        runs = {"world": {}, "folder": {"data": data, "model_config": clip_config_for(data.captions, CLIPConfig())}}
        figures = {}
        for name, kw in runs.items():
            start = time.perf_counter()
            clip, _ = train_clip(config=clip_recipe, eval_size=0, progress=False, **kw)
            seconds[f"{name}_clip_train"] = time.perf_counter() - start
            figures[name] = clip_figures(clip, args.eval)
            if args.prior_steps:
                start = time.perf_counter()
                prior, _ = train_prior(clip, config=prior_recipe, eval_size=0, progress=False, data=kw.get("data"))
                seconds[f"{name}_prior_train"] = time.perf_counter() - start
                figures[name] |= prior_figures(prior, clip, args.eval)
            print(name, {k: round(v[0], 4) for k, v in figures[name].items()}, file=sys.stderr)
    for key in figures["world"]:
        (w, w_ci), (f, f_ci) = figures["world"][key], figures["folder"][key]
        results["figures"][key] = {"world": w, "world_ci": w_ci, "folder": f, "folder_ci": f_ci,
                                   "intervals_overlap": overlap(w_ci, f_ci)}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "folder_roundtrip.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "folder_roundtrip.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    s = results["seconds"]
    lines = ["# Export -> folder -> train vs the generated world", "",
             f"CLIP: {results['clip_steps']} steps of {results['batch_size']} pairs; prior: {results['prior_steps']} "
             f"steps of {results['prior_batch_size']}; {results['torch_threads']} torch thread(s); {results['eval']} "
             f"fresh held-out renders. Export {s['export']:.0f} s, load {s['load']:.0f} s; "
             + ", ".join(f"{k.replace('_', ' ')} {v:.0f} s" for k, v in s.items() if k.endswith("train")) + ".", "",
             "Accuracies with 95 % Wilson intervals, cosines with 95 % bootstrap intervals."]
    if results.get("note"):
        lines += ["", results["note"]]
    lines += ["", "| figure | world | folder | intervals overlap |", "|---|---|---|---|"]
    for key, row in results["figures"].items():
        lines.append(f"| {key} | {format_interval(row['world'], row['world_ci'], 4)} | "
                     f"{format_interval(row['folder'], row['folder_ci'], 4)} | "
                     f"{'yes' if row['intervals_overlap'] else 'no'} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
