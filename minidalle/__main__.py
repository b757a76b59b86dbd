"""Command line: `python -m minidalle {generate,train,evaluate,finetune} --help`."""
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
    if args.refinement:  # a fine-tuned pipeline that knows new words (python -m minidalle finetune)
        from minidalle.refine import load_refinement
        pipe = load_refinement(args.refinement, base=args.checkpoints, device=args.device)
    else:
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


def _finetune(args) -> int:
    import torch

    from minidalle import checkpoints
    from minidalle.pipeline import UnCLIP
    from minidalle.refine import Recipe, refine, save_refinement

    words = tuple(dict.fromkeys(args.concept))
    if args.judge:
        return _extended_judge(args, words)
    out = Path(args.output) if args.output else Path(args.checkpoints) / f"refine_{'_'.join(words)}"
    checkpoints.ensure_writable(out, args.force)  # fail now, not after minutes of training
    steps = {f"{stage}_steps": args.steps for stage in ("text", "prior", "decoder")} if args.steps else {}
    recipe = Recipe(words=words, examples=args.examples, replay=not args.no_replay, stages=tuple(args.tune),
                    rank=args.rank, seed=args.seed, **steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = UnCLIP.from_pretrained(args.checkpoints, device=args.device)
    info = refine(pipe, recipe)
    metrics = {key: info[key] for key in ("base", "cpu_seconds", "trainable_parameters", "losses")}
    metrics["torch_threads"] = torch.get_num_threads()
    if args.evaluate:
        from minidalle.evaluate import load_judge
        from minidalle.refine_eval import evaluate_refinement

        judge = load_judge(Path(args.checkpoints) / "judge_extended", device=args.device, extended=True)
        scores = evaluate_refinement(pipe, judge, recipe.world, n_new=args.evaluate, n_old=args.evaluate)
        metrics["evaluation"] = {k: v for k, v in scores.items() if not k.endswith(("_ci", "_k"))}
        for key in ("new_concept", "new_all", "old_seen_all", "old_heldout_all"):
            lo, hi = scores[f"{key}_ci"]
            print(f"{key:<16} {scores[key]:.3f}  [{lo:.3f}, {hi:.3f}] 95% Wilson, {scores[key + '_k']} prompts")
    save_refinement(pipe, recipe, out, metrics, force=args.force)
    print(f"wrote {out}.safetensors ({recipe.describe()}, {sum(info['cpu_seconds'].values()):.0f} CPU s); try:\n"
          f'  python -m minidalle generate "a small pink striped {words[0] if words[0] != "pink" else "circle"}'
          f' on the left" --refinement {out}')
    return 0


def _extended_judge(args, words: tuple) -> int:
    import torch

    from minidalle.concepts import World
    from minidalle.judge import JUDGE_EXTENDED_TRAIN, ExtendedJudgeConfig, train_judge

    world = World.extended(*words)
    out = Path(args.output) if args.output else Path(args.checkpoints) / "judge_extended"
    if args.threads:
        torch.set_num_threads(args.threads)
    _, metrics = train_judge(ExtendedJudgeConfig(shapes=world.shapes, colors=world.colors), JUDGE_EXTENDED_TRAIN,
                             out=out, force=args.force, device=args.device, world=world)
    print(f"wrote {out}.safetensors; accuracy on fresh renders: "
          + ", ".join(f"{k[9:]} {v:.4f}" for k, v in metrics.items() if k.startswith("accuracy_")))
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
    g.add_argument("--refinement", default=None, help="a refinement from `finetune` (new words), e.g. "
                   "data/checkpoints/refine_star_pink")
    g.set_defaults(run=_generate)

    t = sub.add_parser("train", help="train a stage (or all, in order) and write its checkpoint")
    t.add_argument("stage", choices=["clip", "prior", "decoder", "all"])
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint's saved state")
    t.add_argument("--force", action="store_true", help="overwrite existing checkpoints")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.set_defaults(run=_train)

    e = sub.add_parser("evaluate", help="judge generated images against their prompts")
    e.add_argument("-n", type=int, default=256, help="number of prompts")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(run=_evaluate)

    f = sub.add_parser("finetune", help="teach the pipeline new words from a few examples (notebook 10)")
    f.add_argument("--concept", nargs="+", required=True, choices=["star", "ring", "pink"],
                   help="new shapes and colours to teach, e.g. --concept star pink")
    f.add_argument("--examples", type=int, default=200, help="captioned examples of the new concept (default 200)")
    f.add_argument("--tune", nargs="+", default=["text", "prior", "decoder"], choices=["text", "prior", "decoder"],
                   help="stages to tune, in pipeline order (default: all three; text is required)")
    f.add_argument("--rank", type=int, default=4, help="LoRA rank; 0 tunes every weight of the stages (default 4)")
    f.add_argument("--no-replay", action="store_true", help="train on the new examples only (no old data mixed in)")
    f.add_argument("--steps", type=int, default=None, help="steps per stage (default: the recipe's 150/300/300)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--evaluate", type=int, default=0, metavar="N",
                   help="afterwards, judge N new-concept and N old prompts (needs judge_extended)")
    f.add_argument("-o", "--output", default=None,
                   help="refinement to write (default: CHECKPOINTS/refine_<concepts>)")
    f.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    f.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    f.add_argument("--judge", action="store_true", help="instead, train the attribute judge of the extended world "
                   "(default output CHECKPOINTS/judge_extended), which measures refinements")
    f.set_defaults(run=_finetune)

    for p in (g, t, e, f):
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
