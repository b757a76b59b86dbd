"""Notebook 11's race as a benchmark: the shipped diffusion decoder (DDIM) against the shipped flow
decoder (Euler, Heun) over sampling steps, on the same prompts, prior embeddings and judge.

`python benchmarks/flow.py [--quick] [--checkpoints DIR] [--out DIR] [--threads N]` writes
DIR/flow_results.json and DIR/flow_results.md (default DIR: benchmarks/); `benchmarks/run.py`
runs the same measurement as its "flow" section (`bench(folder, quick)` returns its rows).

`--snapshots DIR` measures the flow decoder over training time instead: DIR holds one folder per
saved step (DIR/<step>/flow_decoder.{json,safetensors}, copied from a training run's checkpoint
folder each time it saved); each is judged with its default sampler on the same prompts and prior
embeddings, next to the shipped diffusion decoder, into DIR_OUT/flow_curve.{json,md}. With
`--diffusion-snapshots DIR2` (DIR2/<step>/decoder.{json,safetensors}, from a rerun of the diffusion
decoder's training that kept its checkpoints) the diffusion decoder gets a curve too, judged with DDIM
at its default steps; the shipped diffusion decoder is still measured, as the row "diffusion (shipped)".
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from minidalle import CHECKPOINT_DIR  # noqa: E402
from minidalle.evaluate import format_interval  # noqa: E402
from minidalle.flow import network_calls  # noqa: E402

SEED = 20_240_611  # far from every training seed
STEPS = (1, 2, 4, 8, 16, 50)


@torch.no_grad()
def race(folder: Path, quick: bool) -> dict:
    """Judge DDIM / Euler / Heun at each number of steps; returns the rows and what they were measured on."""
    from minidalle import race as race_lib
    from minidalle.evaluate import evaluation_prompts, judge_distance, load_judge
    from minidalle.flow_decoder import load_flow_decoder
    from minidalle.pipeline import UnCLIP
    from minidalle.world import render

    n, steps = (32, (1, 4)) if quick else (256, STEPS)
    pipe = UnCLIP.from_pretrained(folder)
    flow_decoder = load_flow_decoder(folder / "flow_decoder")
    judge = load_judge(folder / "judge")
    prompts, scenes, real = evaluation_prompts(n, seed=SEED)
    z = pipe.prior_embedding(prompts, seed=0)  # the same embeddings for both decoders
    samplers = {"DDIM": lambda s: pipe.decoder.sample(z, seed=0, steps=s),
                "Euler": lambda s: flow_decoder.sample(z, seed=0, steps=s, method="euler"),
                "Heun": lambda s: flow_decoder.sample(z, seed=0, steps=s, method="heun")}
    heun_steps = tuple(s for s in steps if s <= 25) + ((25,) if max(steps) > 25 else ())  # at most 50 calls
    rows = []
    for name, sample in samplers.items():
        for row in race_lib.sweep(sample, heun_steps if name == "Heun" else steps, judge, prompts, real):
            calls = network_calls(row["steps"], "heun" if name == "Heun" else "euler")
            rows.append({"sampler": name, "calls": calls, **row})
    budget = flow_decoder.metrics.get("budget", {})
    return {"n": n, "prompts_seed": SEED, "floor": judge_distance(judge, render(scenes, seed=SEED + 1), real),
            "decoder_train_seconds": pipe.decoder.metrics.get("train_seconds"),
            "flow_decoder_train_seconds": flow_decoder.metrics.get("train_seconds"),
            "decoder_steps": (pipe.decoder.metrics.get("history") or [[None]])[-1][0],
            "flow_decoder_steps": (flow_decoder.metrics.get("history") or [[None]])[-1][0],
            "flow_decoder_budget_steps": budget.get("steps", {}).get("flow_decoder"),
            "seconds_per_step": budget.get("seconds_per_step"), "guidance": pipe.decoder.config.guidance,
            "flow_guidance": flow_decoder.config.guidance, "rows": rows}


def saved_steps(snapshots: Path, name: str) -> list[int]:
    """The steps of SNAPSHOTS/<step>/<name>.safetensors, in order; a clear exit when there are none."""
    steps = sorted(int(p.name) for p in snapshots.iterdir() if p.name.isdigit() and (p / f"{name}.safetensors").exists())
    if not steps:
        raise SystemExit(f"no <step>/{name}.safetensors folders in {snapshots}")
    return steps


@torch.no_grad()
def curve(snapshots: Path, folder: Path, quick: bool, diffusion_snapshots: Path | None = None) -> dict:
    """Accuracy of each saved step of a flow decoder's training, against the diffusion decoder's: its final
    (shipped) checkpoint, and each saved step of a rerun of its training when `diffusion_snapshots` is given."""
    from minidalle import race as race_lib
    from minidalle.decoder import load_decoder
    from minidalle.evaluate import evaluation_prompts, load_judge
    from minidalle.flow_decoder import load_flow_decoder
    from minidalle.pipeline import UnCLIP

    steps_saved = saved_steps(snapshots, "flow_decoder")
    diffusion_saved = saved_steps(diffusion_snapshots, "decoder") if diffusion_snapshots else []
    n = 32 if quick else 128
    pipe = UnCLIP.from_pretrained(folder)
    judge = load_judge(folder / "judge")
    prompts, _, real = evaluation_prompts(n, seed=SEED)
    z = pipe.prior_embedding(prompts, seed=0)
    budget, rows = {}, []
    for step in steps_saved:
        model = load_flow_decoder(snapshots / str(step) / "flow_decoder")
        budget = model.metrics.get("budget", budget)
        images = model.sample(z, seed=0)
        rows.append({"model": "flow", "step": step, "sampler": f"{model.config.method} {model.config.steps} steps",
                     **race_lib.judge_samples(judge, images, prompts, real)})
    decoder = pipe.decoder
    decoder_step = (decoder.metrics.get("history") or [[budget.get("reference_steps")]])[-1][0]
    for step in diffusion_saved:
        model = load_decoder(diffusion_snapshots / str(step) / "decoder")
        rows.append({"model": "diffusion", "step": step, "sampler": f"DDIM {model.config.steps} steps",
                     **race_lib.judge_samples(judge, model.sample(z, seed=0), prompts, real)})
    rows.append({"model": "diffusion (shipped)" if diffusion_saved else "diffusion", "step": decoder_step,
                 "sampler": f"DDIM {decoder.config.steps} steps",
                 **race_lib.judge_samples(judge, decoder.sample(z, seed=0), prompts, real)})
    # the equal-CPU budget: a flow step costs (flow s/step / decoder s/step) decoder steps, timed back to back
    per_step = budget.get("seconds_per_step") or {}
    ratio = per_step["flow_decoder"] / per_step["decoder"] if per_step else None
    for row in rows:
        row["budget_share"] = (row["step"] * (ratio if row["model"] == "flow" else 1.0) / decoder_step
                               if ratio and decoder_step else None)
    return {"n": n, "prompts_seed": SEED, "budget": budget, "rows": rows}


def curve_markdown(r: dict) -> str:
    both = any(row["model"] == "diffusion (shipped)" for row in r["rows"])  # the diffusion decoder's curve too
    lines = [f"# {'Flow and diffusion decoders' if both else 'Flow decoder'} over training steps", "",
             f"{r['n']} fresh full prompts, the same prior embeddings, seed 0, each model's default sampler, the judge. "
             "Budget share: training CPU as a share of the diffusion decoder's (flow steps times the two models' "
             f"seconds per step timed back to back: {r['budget'].get('seconds_per_step')}). Intervals: 95 % Wilson; "
             "Fréchet: 95 % bootstrap over prompts.", "",
             "| model | step | budget share | sampler | every attribute right | stripe colour | Fréchet |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        share = "—" if row["budget_share"] is None else f"{row['budget_share']:.2f}"
        lines.append(f"| {row['model']} | {row['step']} | {share} | {row['sampler']} | {format_interval(row['all'], row['all_ci'])} | "
                     f"{format_interval(row['color2'], row['color2_ci'])} | {format_interval(row['frechet'], row['frechet_ci'], 2)} |")
    return "\n".join(lines) + "\n"


def bench(folder: Path, quick: bool) -> list[dict]:
    """benchmarks/run.py's "flow" section: one row per sampler and steps, plus the training budgets."""
    r = race(folder, quick)
    how = f"{r['n']} fresh full prompts, the same prior embeddings for both decoders, seed 0, the judge"
    rows = []
    for row in r["rows"]:
        rows.append({"figure": f"{row['sampler']} {row['steps']} steps ({row['calls']} calls): all right",
                     "value": row["all"], "target": None, "pass": None, "unit": "", "interval": list(row["all_ci"]),
                     "how": f"{how}; every attribute right {format_interval(row['all'], row['all_ci'])} (95 % Wilson); "
                            f"stripe colour {format_interval(row['color2'], row['color2_ci'])}; judge Fréchet "
                            f"{format_interval(row['frechet'], row['frechet_ci'], 2)} (95 % bootstrap; real vs real "
                            f"{r['floor']:.2f})"})
    for name in ("decoder", "flow_decoder"):
        rows.append({"figure": f"{name} training time (s)", "value": r[f"{name}_train_seconds"], "target": None,
                     "pass": None, "unit": "s", "how": f"{name}.json train_seconds, {r[f'{name}_steps']} steps"
                     + (f" of its {r['flow_decoder_budget_steps']} budget steps" if name == "flow_decoder" else "")
                     + (f"; s/step timed back to back when the flow decoder was trained: {r['seconds_per_step']}"
                        if name == "flow_decoder" and r["seconds_per_step"] else "")})
    return rows


def markdown(r: dict) -> str:
    lines = ["# Flow decoder vs diffusion decoder: quality over sampling steps", "",
             f"{r['n']} fresh full prompts (half seen, half held-out compositions), the same prior embeddings "
             f"for both decoders, guidance {r['guidance']:g} (diffusion) and {r['flow_guidance']:g} (flow), seed 0; "
             "the attribute judge. Intervals: 95 % Wilson (accuracies), 95 % bootstrap over prompts (Fréchet "
             f"distance in the judge's features; real renders vs real renders: {r['floor']:.2f}).", "",
             f"Training: diffusion decoder {r['decoder_train_seconds']} s ({r['decoder_steps']} steps), flow "
             f"decoder {r['flow_decoder_train_seconds']} s ({r['flow_decoder_steps']} of its "
             f"{r['flow_decoder_budget_steps']} budget steps); seconds per step timed back to back when the flow "
             f"decoder's training started: {r['seconds_per_step']}. Training seconds were measured at different "
             "times on a shared machine: compare steps, not seconds.", "",
             "| sampler | steps | network calls | every attribute right | stripe colour | Fréchet | seconds |",
             "|---|---|---|---|---|---|---|"]
    for row in r["rows"]:
        lines.append(f"| {row['sampler']} | {row['steps']} | {row['calls']} | {format_interval(row['all'], row['all_ci'])} | "
                     f"{format_interval(row['color2'], row['color2_ci'])} | {format_interval(row['frechet'], row['frechet_ci'], 2)} | "
                     f"{row['sample_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 prompts, 1 and 4 steps")
    parser.add_argument("--checkpoints", default=str(CHECKPOINT_DIR), help="checkpoint folder (default: shipped)")
    parser.add_argument("--out", default=str(HERE), help="folder for flow_results.json and flow_results.md")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--snapshots", default=None, help="folder of <step>/flow_decoder checkpoints: measure the "
                        "flow decoder over training time (flow_curve.json/.md) instead of the race")
    parser.add_argument("--diffusion-snapshots", default=None, help="with --snapshots: a folder of <step>/decoder "
                        "checkpoints from a rerun of the diffusion decoder's training, measured over training time too")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    if args.diffusion_snapshots and not args.snapshots:
        parser.error("--diffusion-snapshots needs --snapshots (the flow decoder's)")
    if args.snapshots:
        diffusion = Path(args.diffusion_snapshots) if args.diffusion_snapshots else None
        r, stem, render = curve(Path(args.snapshots), Path(args.checkpoints), args.quick, diffusion), "flow_curve", curve_markdown
    else:
        r, stem, render = race(Path(args.checkpoints), args.quick), "flow_results", markdown
    r["seconds"] = round(time.perf_counter() - start, 1)
    rows = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in row.items()} for row in r["rows"]]
    (out / f"{stem}.json").write_text(json.dumps(dict(r, rows=rows), indent=2) + "\n")
    (out / f"{stem}.md").write_text(render(r))
    print(render(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
