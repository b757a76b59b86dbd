"""Issue 17: GLIDE's caption pathway in the decoder (unCLIP §2.1), rebuilt on the 900 s recipe.

    python benchmarks/exp17/caption_decoder.py NAME STEPS [--batch 32] [--lr 2e-3] [--layers 2]
                                               [--drop-caption 0.5] [--seed 0] [--threads 1] [--eval-only]

unCLIP's decoder keeps GLIDE's text encoder: the caption's token features are concatenated to the
four context tokens projected from the CLIP image embedding, and the caption is dropped 50 % of the
time during training ("hypothesizing that it could allow the diffusion model to learn aspects of
natural language that CLIP fails to capture (e.g. variable binding)"). Here the text encoder is a
small pre-norm transformer (`--layers` minidalle.transformer.Block's) over the world's word tokens,
at the width of the U-Net's attention; guidance's unconditional branch drops both the embedding
and the caption.

Trains on the same stream as run_decoder.py (the same renders, CLIP embeddings and noise seeds
at every step; the captions are the renders' full captions), saves the EMA weights under
data/runs/exp17/NAME.caption.pt (git-ignored), and judges the same 256 prompts as run_decoder.py
(real renders' embeddings and the shipped prior's, each with its prompt as the caption; and the
real embeddings without a caption, to see how much the decoder leans on it). Appends a row to
results.jsonl in run_decoder.py's format, so compare.py pairs it with the other runs.
"""
from __future__ import annotations

import argparse
import dataclasses
import time

import torch
import torch.nn.functional as F
from torch import nn

import minidalle
from minidalle import distributed
from minidalle.clip import load_clip
from minidalle.decoder import Decoder, DecoderConfig
from minidalle.diffusion import q_sample, training_target
from minidalle.evaluate import evaluation_prompts, load_judge
from minidalle.pipeline import UnCLIP
from minidalle.prior import load_prior
from minidalle.sources import training_batch
from minidalle.tokenizer import WordTokenizer
from minidalle.train import DECODER_TRAIN, Trainer, decoder_loss, set_embedding_stats
from minidalle.transformer import Block
from minidalle.unet import UNet, UNetConfig
from run_decoder import append_row, per_prompt, record

TOKENIZER = WordTokenizer(context_length=14)  # the longest full caption is 10 words + start and end


class CaptionUNet(UNet):
    """The U-Net with a caption encoder whose token features join the context tokens."""

    def __init__(self, config: UNetConfig, layers: int):
        super().__init__(config)
        w = self.attn_width
        self.token_embedding = nn.Embedding(len(TOKENIZER), w)
        self.positions = nn.Parameter(0.02 * torch.randn(TOKENIZER.context_length, w))
        self.caption_blocks = nn.ModuleList([Block(w, config.heads) for _ in range(layers)])
        self.caption_norm = nn.LayerNorm(w)
        self.ids: torch.Tensor | None = None  # (B, L) the captions of the next forward

    def encode_caption(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, L) -> token features (B, L, C); padding is masked inside the encoder."""
        x = self.token_embedding(ids) + self.positions  # (B, L, C)
        mask = ids != TOKENIZER.pad_id  # (B, L)
        for block in self.caption_blocks:
            x = block(x, mask=mask)
        return self.caption_norm(x)

    def context_tokens(self, embedding: torch.Tensor) -> torch.Tensor:
        """The U-Net's K context tokens, then the caption's L token features: (B, K + L, C)."""
        return torch.cat([super().context_tokens(embedding), self.encode_caption(self.ids)], dim=1)


class CaptionDecoder(Decoder):
    """Decoder whose U-Net also reads the caption (dropped with probability drop_caption in training)."""

    def __init__(self, config: DecoderConfig, layers: int, drop_caption: float):
        super().__init__(config)
        self.unet = CaptionUNet(config.unet, layers)
        self.drop_caption = drop_caption
        self.ids: torch.Tensor | None = None  # (B, L) captions of the next sample()

    def empty(self, B: int) -> torch.Tensor:
        return TOKENIZER.encode([""] * B).ids.to(self.device)  # (B, L) start, end, padding

    def loss(self, images, embeddings, generator=None, ids=None):
        """Decoder.loss (the same random draws, in the same order), then the caption drop."""
        x0 = images.to(self.device) * 2 - 1
        B = x0.shape[0]
        t = torch.randint(0, self.config.T, (B,), device=self.device, generator=generator)
        noise = torch.randn(x0.shape, device=self.device, generator=generator)
        x_t = q_sample(x0, t, noise, self.schedule)
        drop = torch.rand(B, device=self.device, generator=generator) < self.config.drop_condition
        cond = torch.where(drop[:, None], self.unet.null_embedding.expand(B, -1), embeddings.to(self.device))
        drop_text = torch.rand(B, device=self.device, generator=generator) < self.drop_caption
        self.unet.ids = torch.where(drop_text[:, None], self.empty(B), ids.to(self.device))  # (B, L)
        target = training_target(self.config.prediction, self.schedule, x0, noise, t)
        return F.mse_loss(self.unet(x_t, t, cond), target)

    def guided(self, x_t, t, embeddings, guidance):
        """Conditional: embedding and caption; unconditional: neither."""
        B = len(embeddings)
        if guidance == 1.0:
            self.unet.ids = self.ids
            return self.unet(x_t, t, embeddings)
        self.unet.ids = torch.cat([self.ids, self.empty(B)])  # (2B, L)
        both = self.unet(torch.cat([x_t, x_t]), torch.cat([t, t]),
                         torch.cat([embeddings, self.unet.null_embedding.expand_as(embeddings)]))
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    def sample_captioned(self, embeddings, captions, **kwargs):
        self.ids = TOKENIZER.encode(captions).ids.to(self.device) if captions is not None else self.empty(len(embeddings))
        return self.sample(embeddings, **kwargs)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name")
    parser.add_argument("steps", type=int)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--drop-caption", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=DECODER_TRAIN.seed, help="the training run's seed")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=256)
    parser.add_argument("--eval-only", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip, prior = load_clip(), load_prior()
    config = DecoderConfig(unet=UNetConfig(embed_dim=clip.config.embed_dim, standardize=True))
    recipe = dataclasses.replace(DECODER_TRAIN, steps=args.steps, batch_size=args.batch, lr=args.lr,
                                 seed=args.seed, eval_every=10**9, save_every=10**9)
    path = minidalle.DATA_DIR / "runs" / "exp17" / f"{args.name}.caption.pt"
    torch.manual_seed(recipe.seed)
    model = CaptionDecoder(config, args.layers, args.drop_caption)
    start = time.perf_counter()
    if args.eval_only:
        saved = torch.load(path)
        model.load_state_dict(saved["state"])
        seconds = saved["train_seconds"]
    else:
        def loss_fn(m, step):  # decoder_loss's, with the renders' captions
            images, captions = training_batch(None, recipe, step, config.unet.image_size, offset=17)
            with torch.no_grad():
                embeddings = clip.encode_image(images)
            seed = distributed.rank_seed(recipe.seed * 1_000_003 + step)
            return m.loss(images, embeddings, torch.Generator().manual_seed(seed), TOKENIZER.encode(captions).ids)

        set_embedding_stats(model, decoder_loss(clip, recipe))  # the statistics run_decoder.py's runs use
        trainer = Trainer(model, loss_fn, recipe, "decoder", progress=False)
        model = trainer.run()
        seconds = time.perf_counter() - start
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state": model.state_dict(), "train_seconds": seconds}, path)
    model.eval()
    judge = load_judge()
    prompts, _, real = evaluation_prompts(args.prompts, seed=0)
    with torch.no_grad():
        z_real = clip.encode_image(real)
        z_prior = UnCLIP(clip, prior, model).prior_embedding(prompts, seed=0)
    row = {"name": args.name, "steps": args.steps, "standardize": True, "min_snr": 0.0, "attention_below": 8,
           "width": 48, "threads": args.threads, "context_tokens": 4, "batch": args.batch, "lr": args.lr,
           "ema": recipe.ema, "seed": recipe.seed, "sample_steps": config.steps, "eta": 0.0, "guidance": config.guidance,
           "train_seconds": round(seconds, 1), "prompts": args.prompts, "caption_layers": args.layers,
           "drop_caption": args.drop_caption}
    for source, z, captions in (("real", z_real, prompts), ("prior", z_prior, prompts), ("realnocap", z_real, None)):
        with torch.no_grad():
            record(row, source, per_prompt(judge.predict(model.sample_captioned(z, captions, seed=0)), prompts))
    append_row(row)


if __name__ == "__main__":
    main()
