"""Command line: `python -m minidalle {generate,train,evaluate} --help`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minidalle import CHECKPOINT_DIR


def _generate(args) -> int:
    import torch

    from minidalle.pipeline import UnCLIP
    from minidalle.plotting import save_grid

    out = Path(args.output)
    if out.exists() and not args.force:
        print(f"error: {out} exists; pass --force to overwrite it", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads) if args.threads else None
    pipe = UnCLIP.from_pretrained(args.checkpoints, device=args.device)
    images = pipe.generate([args.prompt] * args.n, seed=args.seed, guidance=args.guidance, steps=args.steps)
    save_grid(images, out, captions=[args.prompt] * args.n if args.n > 1 else None)
    print(f"wrote {out}")
    return 0


def _train(args) -> int:
    import torch

    from minidalle import train
    from minidalle.clip import load_clip

    if args.threads:
        torch.set_num_threads(args.threads)

    folder = Path(args.checkpoints)
    stages = ["clip", "prior", "decoder"] if args.stage == "all" else [args.stage]
    for stage in stages:
        kw = dict(out=folder / stage, resume=args.resume, force=args.force)
        if stage == "clip":
            train.train_clip(device=args.device, **kw)
        elif stage == "decoder_text":  # the ablation of unCLIP §5.1 (notebook 08): a decoder on text embeddings
            train.train_decoder(load_clip(folder / "clip", args.device), condition="text", **kw)
        else:
            clip = load_clip(folder / "clip", args.device)
            (train.train_prior if stage == "prior" else train.train_decoder)(clip, **kw)
        print(f"wrote {folder / stage}.safetensors")
    return 0


def _evaluate(args) -> int:
    from minidalle.evaluate import evaluate_pipeline, load_judge
    from minidalle.pipeline import UnCLIP

    pipe = UnCLIP.from_pretrained(args.checkpoints, device=args.device)
    results = evaluate_pipeline(pipe, n=args.n, seed=args.seed, judge=load_judge(device=args.device))
    for name, value in results.items():
        if name.endswith(("_ci", "_k")):
            continue  # shown next to their accuracy
        if f"{name}_ci" in results:
            lo, hi = results[f"{name}_ci"]
            print(f"{name:40s} {value:.3f}  [{lo:.3f}, {hi:.3f}] 95% Wilson, {results[name + '_k']} prompts")
        else:
            print(f"{name:40s} {value:.3f}" if isinstance(value, float) else f"{name:40s} {value}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m minidalle", description="A miniature DALL-E 2 (unCLIP).")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="draw images for a prompt and write a PNG")
    g.add_argument("prompt", help='e.g. "a small blue striped square"')
    g.add_argument("-o", "--output", default="out.png", help="PNG to write (default: out.png)")
    g.add_argument("-n", type=int, default=1, help="number of images (a grid when > 1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    g.add_argument("--steps", type=int, default=None, help="DDIM steps")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    g.set_defaults(run=_generate)

    t = sub.add_parser("train", help="train a stage (or all, in order) and write its checkpoint")
    t.add_argument("stage", choices=["clip", "prior", "decoder", "all", "decoder_text"],
                   help="all = clip, prior, decoder; decoder_text = notebook 08's ablation decoder")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint's saved state")
    t.add_argument("--force", action="store_true", help="overwrite existing checkpoints")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.set_defaults(run=_train)

    e = sub.add_parser("evaluate", help="judge generated images against their prompts")
    e.add_argument("-n", type=int, default=256, help="number of prompts")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(run=_evaluate)

    for p in (g, t, e):
        p.add_argument("--checkpoints", default=str(CHECKPOINT_DIR), help="checkpoint folder (default: shipped)")
        p.add_argument("--device", default="cpu",
                       help="torch device: cpu (default) or cuda; the same seed gives different images on each")
    args = parser.parse_args(argv)
    if args.device != "cpu":
        import torch

        try:
            torch.empty(0, device=args.device)
        except (RuntimeError, AssertionError) as error:
            parser.error(f"--device {args.device} is not usable here ({str(error).splitlines()[0]})")
    if getattr(args, "n", 1) < 1:
        parser.error("-n must be >= 1")
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
