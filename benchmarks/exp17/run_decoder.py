"""Issue 17's decoder experiments: train a decoder at a shorter budget with one lever changed, then judge it.

    python benchmarks/exp17/run_decoder.py NAME STEPS [--standardize] [--min-snr G] [--attention-below S]
                                           [--width W] [--context-tokens K] [--batch B] [--lr LR] [--ema D]
                                           [--fg-weight W [--fg-striped]] [--schedule linear|shifted-cosine]
                                           [--threads 2] [--prompts 256]
                                           [--eval-only [--sample-steps N] [--eta E] [--guidance G] --tag SUFFIX]

Trains the shipped recipe (DECODER_TRAIN with `steps` steps, and the options' changes) on the shipped
CLIP into data/runs/exp17/NAME (git-ignored), then judges samples (the decoder's default 16 DDIM steps
and guidance 2, unless --sample-steps / --guidance / --eta say otherwise) of `prompts` fresh full prompts (evaluation_prompts, seed 0: half seen, half held-out),
decoded from (a) the real renders' CLIP image embeddings and (b) the shipped prior's. Appends one
JSON line per run to benchmarks/exp17/results.jsonl: every attribute right at once, the stripe
colour among striped prompts, per-prompt outcomes (for paired comparisons between runs), train
seconds and threads. The row records the model and recipe the checkpoint itself records, so an
--eval-only run needs no training options.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

import minidalle
from minidalle.clip import load_clip
from minidalle.decoder import DecoderConfig, load_decoder
from minidalle.diffusion import SCHEDULES
from minidalle.evaluate import evaluation_prompts, load_judge, score_prompts
from minidalle.pipeline import UnCLIP
from minidalle.prior import load_prior
from minidalle.train import DECODER_TRAIN, recorded_config, train_decoder
from minidalle.unet import UNetConfig
from minidalle.world import parse_prompt

HERE = Path(__file__).resolve().parent


def per_prompt(judged, prompts):
    """(all right, stripe colour right or None) per prompt."""
    rows = []
    for got, prompt in zip(judged, prompts):
        s = score_prompts([got], [prompt])
        group = "seen" if not np.isnan(s["seen_all"]) else "heldout"
        asked = parse_prompt(prompt)
        rows.append((bool(s[f"{group}_all"]), bool(got.color2 == asked.color2) if asked.striped else None))
    return rows


def group_rates(outcomes):
    """{group: (every attribute right, stripe colour right among striped)} for the seen first half and
    the held-out second half of per_prompt's outcomes."""
    half, rates = len(outcomes) // 2, {}
    for group, part in (("seen", outcomes[:half]), ("heldout", outcomes[half:])):
        stripes = [c for _, c in part if c is not None]
        rates[group] = (float(np.mean([a for a, _ in part])), float(np.mean(stripes)))
    return rates


def record(row: dict, source: str, outcomes) -> None:
    """Put one source's per_prompt outcomes into a result row: rates per group and the outcomes string."""
    for group, (right, stripe) in group_rates(outcomes).items():
        row[f"{source}_{group}_all"], row[f"{source}_{group}_color2"] = round(right, 4), round(stripe, 4)
    row[f"{source}_outcomes"] = "".join("1" if a else "0" for a, _ in outcomes)


def append_row(row: dict) -> None:
    """Append a run's row to results.jsonl and print it without the per-prompt outcomes."""
    with open(HERE / "results.jsonl", "a") as f:
        f.write(json.dumps(row) + "\n")
    print(json.dumps({k: v for k, v in row.items() if not k.endswith("outcomes")}))


def with_t_power(power: float) -> None:
    """Make Decoder.loss draw its timesteps as floor(T * u**power) instead of uniformly (this process only)."""
    import minidalle.decoder as decoder_module

    randint = torch.randint

    class Skewed:  # stands in for the torch module inside minidalle.decoder: only randint changes
        def __getattr__(self, name):
            return getattr(torch, name)

        @staticmethod
        def randint(low, high, size, device=None, generator=None):
            u = torch.rand(size, device=device, generator=generator)
            return (low + (high - low) * u.pow(power)).long().clamp(max=high - 1)

    assert decoder_module.torch.randint is randint
    decoder_module.torch = Skewed()


def with_mlp_condition(hidden: int) -> None:
    """Make every Decoder built in this process read its embedding through a one-hidden-layer MLP."""
    import minidalle.decoder as decoder_module
    from torch import nn

    class MLPConditionUNet(decoder_module.UNet):
        def __init__(self, config):
            super().__init__(config)
            E, out, tokens = config.embed_dim, self.cond_proj.out_features, self.context_proj.out_features
            self.cond_proj = nn.Sequential(nn.Linear(E, hidden), nn.SiLU(), nn.Linear(hidden, out))  # (B, 4C)
            self.context_proj = nn.Sequential(nn.Linear(E, hidden), nn.SiLU(), nn.Linear(hidden, tokens))  # (B, K*C)

    decoder_module.UNet = MLPConditionUNet


def with_striped_share(share: float):
    """A context in which the world's train-split scenes are striped with probability `share` (instead
    of 0.5): each solid scene sample_scenes draws becomes striped, with a random stripe colour, with
    probability (share - 0.5) / 0.5. For the decoder's training stream only (the evaluation prompts are
    drawn outside it). Conditional on the embedding, which tells striped from solid, the images the
    decoder learns to draw are the same; it sees more striped ones."""
    import contextlib

    import numpy as np

    import minidalle.world as world

    original = world.sample_scenes

    def sample_scenes(n, split="train", rng=None, world_=None):
        scenes = original(n, split, rng, world_)
        flip = np.random.default_rng(rng.integers(2**31))
        out = []
        for a in scenes:
            if not a.striped and flip.random() < (share - 0.5) / 0.5:
                others = [c for c in world.COLORS if c != a.color]
                a = dataclasses.replace(a, striped=True, color2=others[flip.integers(len(others))])
            out.append(a)
        return out

    @contextlib.contextmanager
    def context():
        if share != 0.5:  # 0.5: the stream untouched, draw for draw
            world.sample_scenes = sample_scenes
        try:
            yield
        finally:
            world.sample_scenes = original
    return context()


def striped_renders(images: torch.Tensor) -> torch.Tensor:
    """(B,) bool: which renders are striped, read from the pixels alone. A render is striped when more
    than 5 % of its object pixels (any channel above 0.3) differ from the object's median colour by more
    than 0.25 in some channel: on 512 train renders, striped ones had 12.5 % or more such pixels, solid
    ones none."""
    objects = images.amax(dim=1) > 0.3  # (B, S, S)
    out = []
    for image, mask in zip(images, objects):
        pixels = image[:, mask].T  # (N, 3)
        far = (pixels - pixels.median(dim=0).values).abs().amax(dim=1) > 0.25  # (N,)
        out.append(bool(far.float().mean() > 0.05))
    return torch.tensor(out)


def with_foreground_weight(weight: float, below: int = 10**9, striped_only: bool = False) -> None:
    """Make Decoder.loss weigh the squared error of object pixels (any channel above 0.3 in the clean
    image; the background is about 0.08) 1 + weight times a background pixel's, at timesteps t < below
    only, and on striped renders only if striped_only (this process only)."""
    import minidalle.decoder as decoder_module
    from minidalle.diffusion import q_sample, training_target

    def loss(self, images, embeddings, generator=None):  # Decoder.loss, draw for draw, but the last three lines
        self._check_embeddings(embeddings)
        x0 = images.to(self.device) * 2 - 1
        B = x0.shape[0]
        t = torch.randint(0, self.config.T, (B,), device=self.device, generator=generator)
        noise = torch.randn(x0.shape, device=self.device, generator=generator)
        x_t = q_sample(x0, t, noise, self.schedule)
        drop = torch.rand(B, device=self.device, generator=generator) < self.config.drop_condition
        cond = torch.where(drop[:, None], self.unet.null_embedding.expand(B, -1), embeddings.to(self.device))
        target = training_target(self.config.prediction, self.schedule, x0, noise, t)
        low = (t < below).float()[:, None, None, None]  # (B, 1, 1, 1)
        if striped_only:
            low = low * striped_renders(images).float().to(low.device)[:, None, None, None]  # (B, 1, 1, 1)
        w = 1 + weight * low * (images.amax(dim=1, keepdim=True) > 0.3).float()  # (B, 1, S, S)
        return (w * (self.unet(x_t, t, cond) - target).pow(2)).mean() / w.mean()

    decoder_module.Decoder.loss = loss


def with_whitening(eps: float) -> None:
    """Make every Decoder built in this process whiten its embedding (PCA: centre, rotate onto the
    training embeddings' principal axes, divide each by sqrt(its variance + eps)) instead of
    standardizing each number on its own. The shipped CLIP's embeddings have variances from 0.15 down to
    5e-6 along their principal axes: most of the spread is in a few directions, and a per-number
    standardization leaves the rest as small as they were (this process only; needs --standardize)."""
    import minidalle.decoder as decoder_module
    from torch import nn

    class Whitened(nn.Module):
        def __init__(self, linear: nn.Linear):
            super().__init__()
            self.linear = linear
            self.register_buffer("white", torch.eye(linear.in_features))  # (E, E)

        def forward(self, x):
            return self.linear(x @ self.white)

    class WhitenedUNet(decoder_module.UNet):
        def __init__(self, config):
            super().__init__(config)
            self.cond_proj, self.context_proj = Whitened(self.cond_proj), Whitened(self.context_proj)

        @torch.no_grad()
        def set_embedding_stats(self, embeddings):
            super().set_embedding_stats(embeddings)
            self.embed_std.fill_(1.0)  # the forward pass subtracts the mean; the projections whiten
            centred = embeddings - embeddings.mean(0)
            variances, axes = torch.linalg.eigh(centred.T @ centred / (len(embeddings) - 1))  # (E,), (E, E)
            white = axes / (variances.clamp(min=0) + eps).sqrt()  # (E, E): x @ white has unit variance per axis
            self.cond_proj.white.copy_(white)
            self.context_proj.white.copy_(white)

    decoder_module.UNet = WhitenedUNet


def with_wsd_schedule(decay: float) -> None:
    """Make the trainer's learning rate warm up, hold at lr, and decay linearly to 0 over the last
    `decay` share of the steps ("warmup-stable-decay") instead of the cosine to 10 % (this process only)."""
    import minidalle.train as train_module

    def learning_rate(step, config):
        if step < config.warmup:
            return config.lr * (step + 1) / config.warmup
        left = (config.steps - step) / max(1, decay * config.steps)
        return config.lr * min(1.0, max(0.0, left))

    train_module.learning_rate = learning_rate


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("steps", type=int)
    parser.add_argument("--standardize", action="store_true",
                        help="standardize the embedding (shipped since issue 17; without it this script trains "
                             "on the raw embedding, as the runs made before then did)")
    parser.add_argument("--min-snr", type=float, default=0.0)
    parser.add_argument("--attention-below", type=int, default=UNetConfig.attention_below)
    parser.add_argument("--width", type=int, default=UNetConfig.width)
    parser.add_argument("--patch", type=int, default=UNetConfig.patch,
                        help="the stem's patch: 1 runs the U-Net's top level at the full 32x32")
    parser.add_argument("--mults", default=",".join(map(str, UNetConfig.mults)),
                        help="channel multipliers per level, e.g. 1,3,6,6 (with --patch 1: four levels)")
    parser.add_argument("--context-tokens", type=int, default=UNetConfig.context_tokens)
    parser.add_argument("--batch", type=int, default=DECODER_TRAIN.batch_size)
    parser.add_argument("--lr", type=float, default=DECODER_TRAIN.lr)
    parser.add_argument("--ema", type=float, default=DECODER_TRAIN.ema)
    parser.add_argument("--seed", type=int, default=DECODER_TRAIN.seed, help="the training run's seed")
    parser.add_argument("--t-power", type=float, default=1.0,
                        help="train on t = floor(T * u**p), u uniform: p < 1 more high-noise steps, p > 1 more low-noise")
    parser.add_argument("--mlp-condition", type=int, default=0,
                        help="read the embedding through Linear-SiLU-Linear (this many hidden units) instead of "
                             "the linear cond_proj and context_proj (0: linear, as shipped)")
    parser.add_argument("--striped-share", type=float, default=0.5,
                        help="the share of striped scenes in the decoder's training stream (the world: 0.5)")
    parser.add_argument("--fg-weight", type=float, default=0.0,
                        help="weigh object pixels' squared error 1 + this times a background pixel's")
    parser.add_argument("--whiten", type=float, default=0.0,
                        help="whiten the embedding (PCA) with this eps instead of standardizing it (0: off)")
    parser.add_argument("--fg-below", type=int, default=10**9,
                        help="--fg-weight at timesteps below this only (default: all)")
    parser.add_argument("--fg-striped", action="store_true", help="--fg-weight on striped renders only")
    parser.add_argument("--schedule", default="cosine", choices=SCHEDULES,
                        help="the noise schedule (default: cosine, the decoder's before issue 17 moved it to linear; "
                             "the row cshift2 was run with a patch whose schedule equals shifted-cosine's exactly)")
    parser.add_argument("--wsd", type=float, default=0.0,
                        help="learning rate: hold, then decay linearly to 0 over this share of the steps (0: cosine)")
    parser.add_argument("--eval-only", action="store_true", help="judge the run already saved under NAME")
    parser.add_argument("--sample-steps", type=int, default=None, help="DDIM steps (default: the decoder's)")
    parser.add_argument("--eta", type=float, default=0.0, help="DDIM eta (0: deterministic)")
    parser.add_argument("--guidance", type=float, default=None, help="guidance (default: the decoder's)")
    parser.add_argument("--tag", default="", help="a suffix for the result's name (e.g. a sampler setting)")
    parser.add_argument("--checkpoints", default=None,
                        help="a folder with the CLIP and prior to use (default: the shipped ones)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompts", type=int, default=256)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    folder = Path(args.checkpoints) if args.checkpoints else minidalle.CHECKPOINT_DIR
    clip, prior = load_clip(folder / "clip"), load_prior(folder / "prior")
    unet = UNetConfig(embed_dim=clip.config.embed_dim, standardize=args.standardize,
                      attention_below=args.attention_below, width=args.width, patch=args.patch,
                      mults=tuple(int(m) for m in args.mults.split(",")),
                      context_tokens=args.context_tokens)
    config = DecoderConfig(unet=unet, min_snr=args.min_snr, schedule=args.schedule)
    recipe = dataclasses.replace(DECODER_TRAIN, steps=args.steps, batch_size=args.batch, lr=args.lr, ema=args.ema,
                                 seed=args.seed, eval_every=10**9, save_every=args.steps)
    out = minidalle.DATA_DIR / "runs" / "exp17" / args.name
    start = time.perf_counter()
    if args.t_power != 1.0:
        with_t_power(args.t_power)
    if args.mlp_condition:
        with_mlp_condition(args.mlp_condition)
    if args.fg_weight:
        with_foreground_weight(args.fg_weight, args.fg_below, args.fg_striped)
    if args.whiten:
        with_whitening(args.whiten)
    if args.wsd:
        with_wsd_schedule(args.wsd)
    if not args.eval_only:
        with with_striped_share(args.striped_share):
            train_decoder(clip, config, recipe, out=out, force=True, progress=False)
    decoder = load_decoder(out)  # its EMA weights
    train_seconds = decoder.metrics.get("train_seconds", time.perf_counter() - start)
    pipe, judge = UnCLIP(clip, prior, decoder), load_judge()
    prompts, _, real = evaluation_prompts(args.prompts, seed=0)
    trained, unet = recorded_config(decoder.metrics, DECODER_TRAIN), decoder.config.unet
    row = {"name": args.name + args.tag, "steps": trained.steps, "standardize": unet.standardize,
           "min_snr": decoder.config.min_snr, "attention_below": unet.attention_below, "width": unet.width,
           "patch": unet.patch, "mults": list(unet.mults),
           "threads": args.threads, "context_tokens": unet.context_tokens, "batch": trained.batch_size,
           "lr": trained.lr, "ema": trained.ema, "seed": trained.seed,
           "sample_steps": args.sample_steps or decoder.config.steps, "eta": args.eta,
           "guidance": args.guidance or decoder.config.guidance,
           "train_seconds": round(train_seconds, 1), "prompts": args.prompts}
    if args.striped_share != 0.5:
        row["striped_share"] = args.striped_share
    if args.fg_weight:
        row["fg_weight"] = args.fg_weight
        if args.fg_below < 10**9:
            row["fg_below"] = args.fg_below
        if args.fg_striped:
            row["fg_striped"] = True
    if args.whiten:
        row["whiten"] = args.whiten
    if args.wsd:
        row["wsd"] = args.wsd
    if decoder.config.schedule != "cosine":
        row["schedule"] = decoder.config.schedule
    if args.checkpoints:
        row["checkpoints"] = args.checkpoints
    if args.t_power != 1.0:  # not recorded by the checkpoint: only a run trained here knows it
        row["t_power"] = args.t_power
    if args.mlp_condition:
        row["mlp_condition"] = args.mlp_condition
    with torch.no_grad():
        conditions = {"real": clip.encode_image(real), "prior": pipe.prior_embedding(prompts, seed=0)}
    for source, embeddings in conditions.items():
        record(row, source, per_prompt(judge.predict(decoder.sample(embeddings, seed=0, steps=args.sample_steps,
                                                                    guidance=args.guidance, eta=args.eta)), prompts))
    append_row(row)


if __name__ == "__main__":
    main()
