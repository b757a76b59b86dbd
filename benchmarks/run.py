"""The course's benchmark: every figure it promises, measured, against its target.

Usage: `python benchmarks/run.py [--quick] [--out DIR] [--checkpoints DIR] [--threads N] [--only SECTION ...]`.
Writes DIR/results.json and DIR/results.md (default DIR: benchmarks/); --only re-measures those
sections and keeps the others from DIR/results.json as they were (each section records its own
machine, date and seconds). A figure that is a sample
(an accuracy, a mean) carries its 95 % interval. Each section is one function; a section whose
checkpoint is not there yet is skipped with a note, not a crash.
--quick uses small sizes (128 instead of 2,048 / 512, fewer repeats): under a minute.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing

from minidalle import CHECKPOINT_DIR  # noqa: E402
from minidalle import checkpoints  # noqa: E402
from minidalle.world import make_dataset, render, sample_scenes  # noqa: E402

SEED = 20_240_601  # far from every training seed


class MissingCheckpoint(Exception):
    """A section needs a checkpoint that has not been trained (or shipped) yet."""


def need(folder: Path, *names: str) -> None:
    for name in names:
        for path in checkpoints.paths(folder / name):
            if not path.exists():
                stage = "judge: minidalle.evaluate.train_judge" if name == "judge" else f"python -m minidalle train {name.replace('_', '-')}"
                raise MissingCheckpoint(f"missing checkpoint {path.name} ({stage})")


def figure(name: str, value, target: str | None, how: str, unit: str = "", interval=None) -> dict:
    """One row: value, a target like '>= 0.99' or '<= 2' (None: reported only), pass/fail, and
    optionally its 95 % interval (lo, hi), which the Markdown table shows next to the value."""
    passed = None
    if target is not None and value is not None:
        op, threshold = target.split()
        passed = bool(value >= float(threshold) if op == ">=" else value <= float(threshold))
    row = {"figure": name, "value": value, "target": target, "pass": passed, "how": how, "unit": unit}
    if interval is not None:
        row["interval"] = [float(interval[0]), float(interval[1])]
    return row


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def train_seconds(folder: Path, name: str) -> float | None:
    seconds = checkpoints.read_meta(folder / name, name).get("metrics", {}).get("train_seconds")
    return float(seconds) if seconds is not None else None


# ----------------------------------------------------------------------------- sections
def bench_render(folder: Path, quick: bool) -> list[dict]:
    scenes = sample_scenes(10_000, "all")
    repeats = 1 if quick else 3
    seconds = median_seconds(lambda: render(scenes, seed=1), repeats)
    return [figure("render 10,000 images (s)", seconds, "<= 2", f"render() of 10,000 random scenes at 32x32, "
                   f"median of {repeats}", "s")]


def _bench_module(name: str):
    """benchmarks/<name>.py, loaded by path (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(f"{name}_bench", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench_attention(folder: Path, quick: bool) -> list[dict]:
    r = _bench_module("attention").bench(quick)
    return [figure("MultiHeadAttention ours / torch", r["mha_ratio"], "<= 1.2",
                   f"{r['mha_shape']}; ours {r['mha_ours_ms']} ms, torch {r['mha_torch_ms']} ms")]


def bench_clip(folder: Path, quick: bool) -> list[dict]:
    need(folder, "clip")
    from minidalle.clip import load_clip
    from minidalle.train import clip_metrics

    n = 128 if quick else 2048
    clip = load_clip(folder / "clip")
    m = clip_metrics(clip, n, "heldout", seed=SEED)
    how = f"{n} fresh held-out-composition renders"
    rows = [figure("CLIP image->text top-1", m["heldout_retrieval_top1"], ">= 0.99",
                   f"{how}, batches of 128, right when the caption text matches")]
    targets = {"shape": ">= 0.98", "size": ">= 0.98", "position": ">= 0.98", "color": ">= 0.95",
               "striped": ">= 0.95", "color2": None}
    for name, target in targets.items():
        rows.append(figure(f"CLIP zero-shot {name}", m[f"heldout_zeroshot_{name}"], target,
                           f"{how}, zero_shot_attributes (softmax over all captions, marginalized)"))
    rows.append(figure("CLIP training time (s)", train_seconds(folder, "clip"), "<= 300", "clip.json train_seconds", "s"))
    return rows


def _retrieval(embeddings: torch.Tensor, text: torch.Tensor, captions: list[str]) -> float:
    from minidalle.clip import retrieval_accuracy

    starts = range(0, len(captions), 128)
    return sum(retrieval_accuracy(embeddings[i:i + 128], text[i:i + 128], captions[i:i + 128]) for i in starts) / len(starts)


@torch.no_grad()
def bench_prior(folder: Path, quick: bool) -> list[dict]:
    need(folder, "clip", "prior")
    from minidalle.clip import load_clip
    from minidalle.prior import load_prior

    n = 128 if quick else 2048
    clip, prior = load_clip(folder / "clip"), load_prior(folder / "prior")
    data = make_dataset(n, "heldout", seed=SEED + 1)
    image, text = clip.encode_image(data.images), clip.encode_text(data.captions)
    other = clip.encode_image(render(data.attributes, seed=SEED + 2))  # a second, independent render
    predicted = prior.sample(text, seed=0)
    per_caption = {name: (v * image).sum(-1) for name, v in (("prior", predicted), ("text", text), ("renders", other))}
    cos = {name: v.mean().item() for name, v in per_caption.items()}  # each (n,) before the mean
    # Paired difference per caption, so its standard error says whether the gap is more than noise.
    gap = per_caption["prior"] - per_caption["renders"]  # (n,)
    gap_se = (gap.std() / len(gap) ** 0.5).item()
    how = f"mean cosine to the true image embedding, {n} held-out captions, prior.sample(seed=0)"
    rows = [figure("prior cosine", cos["prior"], None, how),
            figure("prior cosine - text-embedding cosine", cos["prior"] - cos["text"], ">= 0.03",
                   f"{how}; text baseline {cos['text']:.3f}"),
            figure("prior cosine - two-renders cosine", cos["prior"] - cos["renders"], ">= 0",
                   f"{how}; two independent renders of a caption: {cos['renders']:.4f}; "
                   f"standard error of the paired gap {gap_se:.5f}")]
    from_prior, from_real = _retrieval(predicted, text, data.captions), _retrieval(image, text, data.captions)
    rows.append(figure("retrieval from prior - from real (top-1)", from_prior - from_real, ">= 0",
                       f"caption top-1 in batches of 128: from prior embeddings {from_prior:.3f}, "
                       f"from real image embeddings {from_real:.3f}"))
    rows.append(figure("prior training time (s)", train_seconds(folder, "prior"), "<= 300", "prior.json train_seconds", "s"))
    return rows


def bench_pipeline(folder: Path, quick: bool) -> list[dict]:
    need(folder, "clip", "prior", "decoder", "judge")
    from minidalle.evaluate import evaluate_pipeline, load_judge
    from minidalle.pipeline import UnCLIP

    n = 128 if quick else 512
    pipe = UnCLIP.from_pretrained(folder)
    r = evaluate_pipeline(pipe, n=n, seed=0, judge=load_judge(folder / "judge"))
    how = f"{n} fresh full prompts ({n // 2} {{group}}), pipe.generate(seed=0) with default settings, the judge"
    rows = []
    wilson = "; [..] 95 % Wilson interval"
    for group, high in (("seen", ">= 0.95"), ("heldout", ">= 0.85")):
        for name in ("shape", "color", "striped", "color2", "size", "position"):
            target = {"striped": ">= 0.90", "color2": None}.get(name, high)
            rows.append(figure(f"text->image {group} {name}", r[f"{group}_{name}"], target,
                               how.format(group=group) + wilson, interval=r[f"{group}_{name}_ci"]))
        rows.append(figure(f"text->image {group} all right", r[f"{group}_all"], None, how.format(group=group) + wilson,
                           interval=r[f"{group}_all_ci"]))
        rows.append(figure(f"text->image {group} mean rating 1-5", r[f"{group}_rating"], None, "rating_1_to_5 rubric"))
    rows.append(figure("CLIP score generated / real", r["clip_score"], None,
                       f"100 * mean max(cos, 0); real renders: {r['clip_score_real']:.1f}"))
    rows.append(figure("judge-feature Fréchet distance", r["judge_distance"], None,
                       f"generated vs real renders of the same prompts; real-vs-real floor {r['judge_distance_floor']:.3f}"))
    prompts = make_dataset(16, "train", seed=SEED + 3).captions
    repeats = 1 if quick else 3
    seconds = median_seconds(lambda: pipe.generate(prompts, seed=0), repeats)
    rows.append(figure("generate 16 images (s)", seconds, "<= 5",
                       f"prior + decoder, default settings ({pipe.decoder.config.steps} DDIM steps, guidance "
                       f"{pipe.decoder.config.guidance}), median of {repeats}", "s"))
    total = sum(train_seconds(folder, name) or float("nan") for name in ("clip", "prior", "decoder"))
    rows.append(figure("training time, 3 stages (s)", total, "<= 1800", "sum of train_seconds in the JSONs", "s"))
    return rows


@torch.no_grad()
def bench_inversion(folder: Path, quick: bool) -> list[dict]:
    """DDIM inversion (unCLIP §3.1): decoder.invert, then sample from that x_T at eta = 0."""
    need(folder, "clip", "decoder")
    from minidalle.clip import load_clip
    from minidalle.decoder import load_decoder
    from minidalle.evaluate import bootstrap_interval

    n = 8 if quick else 32
    clip, decoder = load_clip(folder / "clip"), load_decoder(folder / "decoder")
    renders = make_dataset(n, "train", seed=SEED + 5).images
    z = clip.encode_image(renders)
    drawn = decoder.sample(z, seed=1)  # images the decoder can draw
    z_drawn = clip.encode_image(drawn)

    def error(a, b):  # (n,) mean |pixel difference| per image, pixels in [0, 1]
        return (a - b).abs().mean(dim=(1, 2, 3)).numpy()

    own = error(decoder.sample(z_drawn, x_T=decoder.invert(drawn, z_drawn)), drawn)
    real = error(decoder.sample(z, x_T=decoder.invert(renders, z)), renders)
    fresh = error(decoder.sample(z, seed=0), renders)
    how = (f"{n} images, decoder.invert then sample(x_T=..., eta=0) with the default guidance and steps; "
           "mean |pixel difference|, 95 % bootstrap interval")
    return [figure("inversion round trip, the decoder's own images", float(own.mean()), "<= 0.005", how,
                   interval=bootstrap_interval(own)),
            figure("inversion round trip, real renders", float(real.mean()), None,
                   f"{how}; a plain decode from fresh noise: {fresh.mean():.4f}", interval=bootstrap_interval(real)),
            figure("inversion minus fresh-noise error, real renders", float((real - fresh).mean()), "<= 0",
                   "paired per render, 95 % bootstrap interval", interval=bootstrap_interval(real - fresh))]


def bench_judge(folder: Path, quick: bool) -> list[dict]:
    need(folder, "judge")
    from minidalle.evaluate import judge_accuracy, load_judge

    n = 1024 if quick else 2048
    judge = load_judge(folder / "judge")
    rows = [figure(f"judge {name}", value, ">= 0.99", f"{n} fresh renders of all compositions")
            for name, value in judge_accuracy(judge, n, seed=SEED + 4).items()]
    rows.append(figure("judge training time (s)", train_seconds(folder, "judge"), "<= 90", "judge.json train_seconds", "s"))
    return rows


def bench_gan(folder: Path, quick: bool) -> list[dict]:
    need(folder, "clip", "prior", "decoder", "judge", "gan")
    return _bench_module("gan").bench(folder, quick, figure, SEED + 5)  # notebook 09's race



def bench_refinement(folder: Path, quick: bool) -> list[dict]:
    module = _bench_module("refinement")  # notebook 10's refinement
    note = module.missing(folder)
    if note:
        raise MissingCheckpoint(note)
    return [figure(row.pop("figure"), **row) for row in module.bench(folder, quick)]  # rows name it 'figure'


def bench_flow(folder: Path, quick: bool) -> list[dict]:
    """Notebook 11's race: diffusion decoder (DDIM) vs flow decoder (Euler, Heun) over sampling steps."""
    need(folder, "clip", "prior", "decoder", "flow_decoder", "judge")
    return _bench_module("flow").bench(folder, quick)


SECTIONS = {"render": bench_render, "attention": bench_attention, "clip": bench_clip, "prior": bench_prior,
            "pipeline": bench_pipeline, "inversion": bench_inversion, "judge": bench_judge, "gan": bench_gan,
            "refinement": bench_refinement, "flow": bench_flow}


# ----------------------------------------------------------------------------- report
def _cell(value, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.2f} s" if unit == "s" else f"{value:.3f}"
    return str(value)


def markdown(results: dict) -> str:
    m = results["machine"]
    lines = ["# Benchmark results", "",
             f"{m['cores']} CPU cores, torch {m['torch']} with {m['torch_threads']} threads, Python {m['python']}, "
             f"{'quick' if m['quick'] else 'full'} mode, {results['seconds']:.0f} s in all.", ""]
    runs = {(s.get("ran"), json.dumps(s.get("machine"), sort_keys=True)) for s in results["sections"].values()}
    if len(runs) > 1:  # sections re-measured with --only at other times
        lines += ["Sections measured in separate runs (`--only`), each with its date, threads and seconds:", ""]
        lines += [f"- {name}: {s.get('ran') or 'before dates were recorded'}, "
                  f"{(s.get('machine') or m)['torch_threads']} threads, {s.get('seconds', 0):.0f} s"
                  for name, s in results["sections"].items()]
        lines.append("")
    lines += ["| section | figure | value | target | result | how it was measured |", "|---|---|---|---|---|---|"]
    for name, section in results["sections"].items():
        if section["status"] != "ok":
            lines.append(f"| {name} | — | — | — | {section['status']} | {section['note']} |")
        for row in section.get("figures", []):
            verdict = {True: "pass", False: "**fail**", None: "—"}[row["pass"]]
            value = _cell(row["value"], row["unit"])
            if row.get("interval"):
                value += " [{:.3f}, {:.3f}]".format(*row["interval"])
            lines.append(f"| {name} | {row['figure']} | {value} | {row['target'] or '—'} "
                         f"| {verdict} | {row['how']} |")
    gpu = HERE / "gpu_results.json"
    if gpu.exists():  # recorded by benchmarks/gpu.py on a machine with a GPU; not re-measured here
        g = json.loads(gpu.read_text())
        lines += ["", f"## On a GPU ({g.get('gpu', g['device'])}, torch {g['torch']}; recorded by `benchmarks/gpu.py`)",
                  "", "| figure | value |", "|---|---|"]
        lines += [f"| {k} | {_gpu_cell(v)} |" for k, v in g.items() if k not in ("device", "gpu", "torch", "python")]
    roundtrip = HERE / "folder_roundtrip.md"
    if roundtrip.exists():  # recorded by benchmarks/folder_roundtrip.py (two CLIP runs); not re-measured here
        recorded = roundtrip.read_text().splitlines()
        lines += ["", "## Export -> image folder -> train (recorded by `benchmarks/folder_roundtrip.py`)"] + recorded[1:]
    return "\n".join(lines) + "\n"


def _gpu_cell(value) -> str:
    if isinstance(value, dict):
        keys = ("seen_shape", "seen_color", "seen_striped", "heldout_shape", "heldout_color", "heldout_striped")
        shown = {k: value[k] for k in keys if k in value} or value
        return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in shown.items())
    return str(value)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, fewer repeats (under a minute)")
    parser.add_argument("--out", default=str(HERE), help="folder for results.json and results.md")
    parser.add_argument("--checkpoints", default=str(CHECKPOINT_DIR), help="checkpoint folder (default: shipped)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--only", nargs="+", choices=list(SECTIONS), help="run only these sections")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    folder, out = Path(args.checkpoints), Path(args.out)
    ran = time.strftime("%Y-%m-%d %H:%M %Z")  # when this run started: one date for all its sections
    machine = {"cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
               "python": platform.python_version(), "quick": args.quick}
    results = {"machine": machine, "sections": {}}
    previous = out / "results.json"
    if args.only and previous.exists():  # re-measure some sections, keep the others' figures
        kept = json.loads(previous.read_text())
        if kept["machine"].get("quick") != args.quick:
            parser.error(f"{previous} was measured in {'quick' if kept['machine'].get('quick') else 'full'} mode; "
                         "--only must use the same mode (or choose another --out)")
        for section in kept["sections"].values():
            section.setdefault("machine", kept["machine"])
        results = {"machine": machine, "sections": {name: kept["sections"].get(name) for name in SECTIONS
                                                    if name in kept["sections"]}}
    failed = False
    for name in args.only or SECTIONS:
        section_start = time.perf_counter()
        try:
            section = {"status": "ok", "note": "", "figures": SECTIONS[name](folder, args.quick)}
        except MissingCheckpoint as error:
            section = {"status": "skipped", "note": str(error)}
        except Exception as error:  # one broken section must not hide the others' figures
            traceback.print_exc()
            section, failed = {"status": "error", "note": f"{type(error).__name__}: {error}"}, True
        section["seconds"] = round(time.perf_counter() - section_start, 1)
        section |= {"ran": ran, "machine": machine}
        results["sections"][name] = section
        print(f"{name}: {section['status']} ({section['seconds']} s) {section['note']}", file=sys.stderr)
    results["sections"] = {name: results["sections"][name] for name in SECTIONS if name in results["sections"]}
    results["seconds"] = round(sum(s.get("seconds", 0) for s in results["sections"].values()), 1)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(markdown(results))
    print(markdown(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
