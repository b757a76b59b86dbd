"""Does the course run unchanged on a GPU? One script, for a machine that has one.

Usage: `python benchmarks/gpu.py --out DIR [--device cuda] [--quick] [--full-train]`.
The figures in benchmarks/gpu_results.json (shown at the end of results.md) came from
`python3 benchmarks/gpu.py --out DIR --full-train` on one H100.

1. The shipped checkpoints on the device: sampling speed, and text -> image quality judged
   as in `make bench` (the numbers differ from the CPU's a little: another random stream).
2. Every training stage for a few steps on the device, with save and resume.
3. With --full-train, `train all` from scratch on the device into DIR/checkpoints, then the
   same judged quality for the pipeline trained there.

Writes DIR/gpu_results.json and prints each figure as it comes. Nothing here is part of `make test`:
CI has no GPU. --device cpu --quick runs the same code on a CPU in a minute, to check it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout without installing

from minidalle.evaluate import evaluate_pipeline, load_judge  # noqa: E402
from minidalle.judge import JUDGE_TRAIN, train_judge  # noqa: E402
from minidalle.pipeline import UnCLIP  # noqa: E402
from minidalle import train  # noqa: E402


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str) -> tuple[object, float]:
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def quality(pipe: UnCLIP, judge, n: int) -> dict:
    r = evaluate_pipeline(pipe, n=n, seed=0, judge=judge)
    return {k: round(v, 4) for k, v in r.items() if isinstance(v, float)}


def short(config: train.TrainConfig, steps: int) -> train.TrainConfig:
    return dataclasses.replace(config, steps=steps, eval_every=steps, save_every=steps)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for gpu_results.json (and checkpoints with --full-train)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="small sizes: a check of this script")
    parser.add_argument("--full-train", action="store_true", help="also train all three stages from scratch")
    args = parser.parse_args(argv)
    out, device = Path(args.out), args.device
    out.mkdir(parents=True, exist_ok=True)
    report: dict = {"device": device, "torch": torch.__version__, "python": platform.python_version()}
    if device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(0)

    def note(key, value):
        report[key] = value
        print(f"{key}: {value}", flush=True)
        (out / "gpu_results.json").write_text(json.dumps(report, indent=1))

    n = 32 if args.quick else 512
    # 1. Shipped checkpoints on the device.
    pipe, judge = UnCLIP.from_pretrained(device=device), load_judge(device=device)
    prompts = ["a small blue striped square on the left"] * 16
    pipe.generate(prompts, steps=5)  # warm-up: kernels, allocator
    images, seconds = timed(lambda: pipe.generate(prompts, seed=0, steps=50), device)
    note("generate_16_seconds", round(seconds, 3))
    again = pipe.generate(prompts, seed=0, steps=50)
    note("same_seed_same_images_max_diff", (images - again).abs().max().item())
    note("images_in_range", bool(images.min() >= 0 and images.max() <= 1 and images.shape == (16, 3, 32, 32)))
    note("shipped_quality", quality(pipe, judge, n))

    # 2. Each stage for a few steps, saved and resumed, on the device.
    steps = 4 if args.quick else 40
    folder = out / "short"
    clip, trainer = train.train_clip(config=short(train.CLIP_TRAIN, steps), out=folder / "clip", force=True,
                                     progress=False, eval_size=64, device=device)
    note("clip_seconds_per_step", round(trainer.seconds / steps, 4))
    _, trainer = train.train_prior(clip, config=short(train.PRIOR_TRAIN, steps), out=folder / "prior", force=True,
                                   progress=False, bank_size=2048, eval_size=64)
    note("prior_seconds_per_step", round(trainer.seconds / steps, 4))
    decoder, trainer = train.train_decoder(clip, config=short(train.DECODER_TRAIN, steps), out=folder / "decoder",
                                           force=True, progress=False)
    note("decoder_seconds_per_step", round(trainer.seconds / steps, 4))
    resumed, trainer = train.train_decoder(clip, config=short(train.DECODER_TRAIN, steps + 2),
                                           out=folder / "decoder", resume=True, progress=False)
    note("decoder_resumed_to_step", trainer.step)
    _, metrics = train_judge(train=short(JUDGE_TRAIN, steps), progress=False, eval_size=64, device=device)
    note("judge_seconds_per_step", round(metrics["train_seconds"] / steps, 4))
    note("projected_full_train_seconds", round(
        report["clip_seconds_per_step"] * train.CLIP_TRAIN.steps + report["prior_seconds_per_step"]
        * train.PRIOR_TRAIN.steps + report["decoder_seconds_per_step"] * train.DECODER_TRAIN.steps))

    # 3. Train all three from scratch on the device, then judge that pipeline.
    if args.full_train:
        from minidalle.__main__ import main as cli

        folder = out / "checkpoints"
        _, seconds = timed(lambda: cli(["train", "all", "--checkpoints", str(folder), "--device", device,
                                        "--force"]), device)
        note("train_all_seconds", round(seconds, 1))
        trained = UnCLIP.from_pretrained(folder, device=device)
        note("trained_here_quality", quality(trained, judge, n))
        for stage in ("clip", "prior"):
            metrics = json.loads((folder / f"{stage}.json").read_text())["metrics"]
            note(f"{stage}_metrics", {k: v for k, v in metrics.items() if isinstance(v, float)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
