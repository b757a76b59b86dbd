"""Command line: `python -m minidalle {generate,train,evaluate,finetune,export-world} --help`.

`torchrun --nproc_per_node=N -m minidalle train ...` trains on N processes (minidalle.distributed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from minidalle import CHECKPOINT_DIR, DATA_DIR


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
        pipe = UnCLIP.from_pretrained(args.checkpoints, device=args.device, decoder=args.decoder)
    images = pipe.generate([args.prompt] * args.n, seed=args.seed, guidance=args.guidance, steps=args.steps)
    save_grid(images, out, captions=[args.prompt] * args.n if args.n > 1 else None)
    print(f"wrote {out}")
    return 0


def _stage_options(stage: str, args, clip=None) -> dict:
    """Keyword arguments of train_<stage> beyond the CLIP: --preset, --steps, --batch-size, --data."""
    import dataclasses

    from minidalle import checkpoints
    from minidalle.clip import CLIPConfig, make_tokenizer
    from minidalle.data import load_folder
    from minidalle.presets import get_preset
    from minidalle.sources import clip_config_for
    from minidalle.world import all_scenes, caption

    preset, out = get_preset(args.preset), Path(args.checkpoints) / stage
    kind = "decoder" if stage == "decoder_text" else stage  # decoder_text: the decoder's recipe, text embeddings
    changes = {k: v for k, v in (("steps", args.steps), ("batch_size", args.batch_size)) if v is not None}
    kw = dict(config=dataclasses.replace(getattr(preset, f"{kind}_train"), **changes), out=out,
              resume=args.resume, force=args.force)
    if stage == "decoder_text":
        kw["condition"] = "text"
    if stage != "clip":
        kw["model_config"] = preset.prior_for(clip) if stage == "prior" else preset.decoder_for(clip)
        if kind == "decoder" and getattr(args, "schedule", None):
            from minidalle.decoder import DecoderConfig
            from minidalle.unet import UNetConfig

            base = kw["model_config"] or DecoderConfig(unet=UNetConfig(embed_dim=clip.config.embed_dim))
            kw["model_config"] = dataclasses.replace(base, schedule=args.schedule)
        if args.data:  # what reads captions reads them with its CLIP's tokenizer: check them all now
            kw["data"] = load_folder(args.data, clip.config.vision.image_size,
                                     clip.tokenizer if stage in ("prior", "decoder_text") else None)
        return kw
    config, saved = preset.clip or CLIPConfig(), args.resume and checkpoints.paths(out)[1].exists()
    if saved:  # the saved vocabulary, not one rebuilt from captions that may have changed
        config = checkpoints.config_from_dict(CLIPConfig, checkpoints.read_meta(out, "clip")["config"])
    if args.data:
        kw["data"] = load_folder(args.data, config.vision.image_size, make_tokenizer(config) if saved else None)
        if not saved:
            config = clip_config_for(kw["data"].captions, config, args.tokenizer or "word")
    elif args.tokenizer == "bpe" and not saved:
        config = clip_config_for([caption(s) for s in all_scenes()], config, "bpe")
    kw["model_config"] = config
    return kw


def _train(args) -> int:
    import torch

    from minidalle import distributed, train
    from minidalle.clip import load_clip

    if args.threads:
        torch.set_num_threads(args.threads)

    if args.schedule and args.stage not in ("decoder", "decoder_text", "all"):
        print("error: --schedule is the diffusion decoder's: use it with train decoder, decoder_text or all",
              file=sys.stderr)
        return 2
    if args.stage == "flow-decoder":
        return _train_flow_decoder(args)
    folder = Path(args.checkpoints)
    stages = ["clip", "prior", "decoder"] if args.stage == "all" else [args.stage]
    with distributed.session(torch.device(args.device)):
        for stage in stages:
            if stage == "gan":  # notebook 09's baseline, not part of "all": the decoder's CPU seconds, measured
                from minidalle.gan import train_gan_like_decoder

                if distributed.world_size() > 1:  # its two-player step has no DDP path
                    print("error: train gan runs in one process; start it without torchrun", file=sys.stderr)
                    return 2

                train_gan_like_decoder(folder, out=folder / stage, resume=args.resume, force=args.force,
                                       device=args.device, steps=args.steps, threads=args.threads)
            elif stage == "clip":
                train.train_clip(device=args.device, **_stage_options(stage, args))
            else:  # prior, decoder, or decoder_text (the ablation of unCLIP §5.1, notebook 08)
                clip = load_clip(folder / "clip", args.device)
                (train.train_prior if stage == "prior" else train.train_decoder)(
                    clip, **_stage_options(stage, args, clip))
            if distributed.is_main():
                print(f"wrote {folder / stage}.safetensors")
    return 0


def _export_world(args) -> int:
    from minidalle.data import export_world

    folder = export_world(args.folder, args.n, seed=args.seed, split=args.split, partial=not args.full_captions,
                          image_size=args.image_size, force=args.force,
                          metadata="metadata.jsonl" if args.jsonl else "metadata.csv")
    print(f"wrote {args.n} images and their captions to {folder}")
    return 0


def _train_flow_decoder(args) -> int:
    """The decoder's U-Net, conditioning and recipe trained by flow matching (notebook 11), for as many
    CPU seconds as the decoder in the same folder: both training steps are timed here, back to back."""
    import dataclasses

    from minidalle import checkpoints, race, train
    from minidalle.clip import load_clip
    from minidalle.decoder import Decoder, load_decoder
    from minidalle.flow_decoder import FlowDecoder, FlowDecoderConfig

    folder = Path(args.checkpoints)
    out = folder / "flow_decoder"
    clip, decoder = load_clip(folder / "clip", args.device), load_decoder(folder / "decoder", args.device)
    recipe = train.recorded_config(decoder.metrics, train.DECODER_TRAIN)  # what the decoder was trained with
    model_config = FlowDecoderConfig.like(decoder.config)
    if args.resume and checkpoints.paths(out)[1].exists():  # the budget set when this run started
        budget = checkpoints.read_meta(out, "flow_decoder")["metrics"]["budget"]
    else:
        checkpoints.ensure_writable(out, args.force)
        models = {"decoder": Decoder(decoder.config), "flow_decoder": FlowDecoder(model_config)}
        budget = race.equal_budget(models, train.decoder_loss(clip, recipe), recipe)
        budget["decoder_train_seconds"] = decoder.metrics.get("train_seconds")
    steps = budget["steps"]["flow_decoder"]
    print(f"decoder {budget['seconds_per_step']['decoder']:.3f} s/step, flow decoder "
          f"{budget['seconds_per_step']['flow_decoder']:.3f} s/step (timed back to back): {recipe.steps} decoder "
          f"steps -> {steps} flow-decoder steps")
    train.train_flow_decoder(clip, model_config, dataclasses.replace(recipe, steps=steps), out=out,
                             resume=args.resume, force=args.force, metrics={"budget": budget})
    print(f"wrote {out}.safetensors")
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
    from minidalle.diffusion import SCHEDULES

    parser = argparse.ArgumentParser(prog="python -m minidalle", description="A miniature DALL-E 2 (unCLIP).")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="draw images for a prompt and write a PNG")
    g.add_argument("prompt", help='e.g. "a small blue striped square"')
    g.add_argument("-o", "--output", default="out.png", help="PNG to write (default: out.png)")
    g.add_argument("-n", type=int, default=1, help="number of images (a grid when > 1)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale")
    g.add_argument("--steps", type=int, default=None, help="sampling steps (DDIM, or the flow decoder's ODE steps)")
    g.add_argument("--decoder", default="decoder", help="decoder checkpoint in the folder: decoder (diffusion, "
                   "default) or flow_decoder (notebook 11)")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    g.add_argument("--force", action="store_true", help="overwrite the output if it exists")
    g.add_argument("--refinement", default=None, help="a refinement from `finetune` (new words), e.g. "
                   "data/checkpoints/refine_star_pink")
    g.set_defaults(run=_generate)

    t = sub.add_parser("train", help="train a stage (or all, in order) and write its checkpoint")
    t.add_argument("stage", choices=["clip", "prior", "decoder", "all", "decoder_text", "gan", "flow-decoder"],
                   help="all = clip, prior, decoder; decoder_text = notebook 08's ablation decoder (on CLIP "
                        "text embeddings); gan = notebook 09's GAN; flow-decoder = notebook 11's decoder "
                        "(both need clip and decoder)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint's saved state")
    t.add_argument("--force", action="store_true", help="overwrite existing checkpoints")
    t.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    t.add_argument("--data", default=None, help="an image folder to train on instead of the shapes world: "
                   "images + metadata.csv or metadata.jsonl with the columns file_name and text")
    t.add_argument("--preset", default="default", choices=["tiny", "default", "large"],
                   help="model sizes: tiny (tests), default (the course's 32x32), large (64x64, for a GPU)")
    t.add_argument("--steps", type=int, default=None,
                   help="training steps (default: the preset's; gan: as many as cost the decoder's CPU seconds)")
    t.add_argument("--batch-size", type=int, default=None, help="global batch size, over all processes")
    t.add_argument("--schedule", choices=list(SCHEDULES), default=None,
                   help="the diffusion decoder's noise schedule (default: linear; notebook 06 compares them)")
    t.add_argument("--tokenizer", choices=["word", "bpe"], default=None,
                   help="CLIP's tokenizer for new captions: word (a vocabulary of the captions' words, default "
                        "with --data) or bpe (open_clip's, any text)")
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
    f.add_argument("--steps", type=int, default=None, help="steps per stage (default: the recipe's 100 text / 200 prior / 400 decoder)")
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

    x = sub.add_parser("export-world", help="write the shapes world as an image folder (PNGs + metadata.csv)")
    x.add_argument("folder", help="folder to write (refused if not empty, unless --force)")
    x.add_argument("-n", "--n", type=int, default=10_000, help="number of images")
    x.add_argument("--seed", type=int, default=0)
    x.add_argument("--split", choices=["train", "heldout", "all"], default="train")
    x.add_argument("--image-size", type=int, default=32)
    x.add_argument("--full-captions", action="store_true",
                   help="full captions only (default: full and partial ones, as CLIP training draws them)")
    x.add_argument("--jsonl", action="store_true", help="write metadata.jsonl instead of metadata.csv")
    x.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    x.set_defaults(run=_export_world)

    for p in (g, t, e, f):
        p.add_argument("--checkpoints", default=None, help="checkpoint folder (default: the shipped ones; for "
                       "train --data DIR: data/runs/<DIR's name>)")
        p.add_argument("--device", default="cpu",
                       help="torch device: cpu (default), cuda, mps or auto (CUDA, then MPS, then CPU); "
                            "the same seed gives different images on each")
    args = parser.parse_args(argv)
    if getattr(args, "data", None) and args.checkpoints is None:  # never the shipped world's checkpoints
        args.checkpoints = str(DATA_DIR / "runs" / Path(args.data).resolve().name)
    elif hasattr(args, "checkpoints") and args.checkpoints is None:
        args.checkpoints = str(CHECKPOINT_DIR)
    if getattr(args, "device", "cpu") != "cpu":
        import torch

        from minidalle.distributed import resolve_device

        try:
            args.device = str(resolve_device(args.device))
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
