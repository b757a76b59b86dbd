"""A conditional GAN baseline (notebook 09): (noise, CLIP image embedding) -> 32x32 image.

The decoder's task solved as before diffusion: a generator draws an image in one forward pass,
a discriminator tells its images from renders, each trained against the other (Goodfellow et al. 2014).

- Generator: the decoder's FiLM residual blocks (minidalle.unet.ResBlock) on 4x4 -> 8x8 -> 16x16
  maps and its 2x2 pixel-shuffle output; where the decoder's blocks hear (timestep + embedding),
  the generator's hear (noise + embedding).
- Discriminator: residual CNN, spectral norm on every layer (Miyato et al. 2018), projection head
  (Miyato & Koyama 2018): D(x, e) = psi(phi(x)) + <V e, phi(x)>. Projection rather than FiLM:
  D's question is "does x fit e?", which an inner product of image features and the projected
  embedding scores directly; it beat feeding the condition in as an input, and BigGAN uses it.
- Hinge losses (Lim & Ye 2017; Miyato et al. 2018); samples from an exponential moving average of
  the generator's weights (Karras et al. 2018; Yazici et al. 2019).

Shape legend: B batch, Z noise width, E CLIP embedding width, C channels, S side, F features.
"""
from __future__ import annotations

import copy
import statistics
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from minidalle import checkpoints
from minidalle.train import TrainConfig, Trainer, ema_update
from minidalle.unet import ResBlock


@dataclass(frozen=True)
class GANConfig:
    image_size: int = 32
    patch: int = 2  # the generator draws 2x2 patches from a 16x16 map, as the decoder's output layer
    width: int = 48  # channels of the finest map, as the decoder's U-Net
    mults: tuple = (1, 2, 2)  # channel multipliers from the finest (16x16) to the coarsest (4x4) map
    blocks: int = 1  # residual blocks per resolution, in each network
    embed_dim: int = 64  # CLIP embedding width
    noise_dim: int = 32
    ema: float = 0.999  # decay of the generator's weight average (Karras et al. 2018 use 0.999)
    betas: tuple = (0.0, 0.99)  # Adam's (beta1, beta2): no momentum, as BigGAN (Brock et al. 2019)

    @classmethod
    def tiny(cls) -> "GANConfig":
        return cls(width=16, mults=(1, 2), embed_dim=16, noise_dim=8)

    def __post_init__(self):
        if self.image_size % (self.patch * 2 ** (len(self.mults) - 1)):
            raise ValueError(f"image_size {self.image_size} must be divisible by patch * 2^(levels-1)")
        if self.width % 8:
            raise ValueError(f"width {self.width} must be a multiple of 8 (GroupNorm groups)")
        if not 0 <= self.ema < 1 or self.noise_dim < 1:
            raise ValueError(f"need 0 <= ema < 1 and noise_dim >= 1, got ema={self.ema}, noise_dim={self.noise_dim}")


# ----------------------------------------------------------------------------- the math
def discriminator_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge loss of D (Lim & Ye 2017; Miyato et al. 2018): mean relu(1 - D(x)) + mean relu(1 + D(G(z))).

    Scores (B,). Beyond the margin (real above +1, fake below -1) an example adds nothing.
    """
    return F.relu(1 - real_scores).mean() + F.relu(1 + fake_scores).mean()


def generator_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Hinge loss of G: -mean D(G(z)); scores (B,). Not clipped: G always gains by a higher score."""
    return -fake_scores.mean()


def projection_logit(features: torch.Tensor, embeddings: torch.Tensor, psi: nn.Module, project: nn.Module):
    """Projection discriminator's score (Miyato & Koyama 2018): psi(phi) + <V e, phi>.

    features phi(x) (B, F), embeddings e (B, E), psi: F -> 1, project V: E -> F; returns (B,).
    """
    return psi(features).squeeze(-1) + (project(embeddings) * features).sum(dim=-1)


def _check_embeddings(embeddings, E: int) -> None:
    if not torch.is_tensor(embeddings) or embeddings.dim() != 2 or embeddings.shape[1] != E:
        shape = tuple(embeddings.shape) if torch.is_tensor(embeddings) else type(embeddings).__name__
        raise ValueError(f"expected CLIP image embeddings of shape (N, {E}), got {shape}")


# ----------------------------------------------------------------------------- the two players
class Generator(nn.Module):
    """(noise (B, Z), embedding (B, E)) -> image (B, 3, S, S) in [-1, 1]."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = c = config
        emb_dim = 4 * c.width
        self.noise_mlp = nn.Sequential(nn.Linear(c.noise_dim, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.cond_proj = nn.Linear(c.embed_dim, emb_dim)
        widths = [c.width * m for m in c.mults]
        self.start = c.image_size // c.patch // 2 ** (len(widths) - 1)  # side of the first map (4)
        self.input = nn.Linear(c.noise_dim + c.embed_dim, widths[-1] * self.start**2)
        self.blocks, channels = nn.ModuleList(), widths[-1]
        for level, w in reversed(list(enumerate(widths))):
            for _ in range(c.blocks):
                self.blocks.append(ResBlock(channels, w, emb_dim, 0.0))
                channels = w
            if level > 0:
                self.blocks.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out = nn.Sequential(nn.GroupNorm(8, channels), nn.SiLU(),
                                 nn.Conv2d(channels, 3 * c.patch**2, 3, padding=1), nn.PixelShuffle(c.patch), nn.Tanh())

    @property
    def device(self) -> torch.device:
        return self.cond_proj.weight.device

    def forward(self, noise: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        B = noise.shape[0]
        emb = self.noise_mlp(noise) + self.cond_proj(embeddings)  # (B, 4W): the decoder's time + condition slot
        h = self.input(torch.cat([noise, embeddings], dim=1)).view(B, -1, self.start, self.start)  # (B, C, 4, 4)
        for block in self.blocks:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        return self.out(h)  # (B, 3, S, S)

    @torch.no_grad()
    def sample(self, embeddings: torch.Tensor, seed: int | torch.Generator = 0) -> torch.Tensor:
        """embeddings (N, E) -> images (N, 3, S, S) in [0, 1]: one forward pass, noise from the seed."""
        _check_embeddings(embeddings, self.config.embed_dim)
        generator = seed if isinstance(seed, torch.Generator) else torch.Generator(self.device).manual_seed(seed)
        noise = torch.randn(len(embeddings), self.config.noise_dim, generator=generator, device=self.device)
        return (self(noise, embeddings.to(self.device, torch.float32)) + 1) / 2


class DownBlock(nn.Module):
    """ReLU-conv twice plus a skip, then 2x2 average pooling (Miyato et al. 2018's ResNet discriminator)."""

    def __init__(self, c_in: int, c_out: int, down: bool):
        super().__init__()
        self.conv1 = spectral_norm(nn.Conv2d(c_in, c_out, 3, padding=1))
        self.conv2 = spectral_norm(nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = spectral_norm(nn.Conv2d(c_in, c_out, 1)) if c_in != c_out else nn.Identity()
        self.down = down

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, S, S) -> (B, C_out, S/2, S/2) when down, else (B, C_out, S, S)."""
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        h = h + self.skip(x)
        return F.avg_pool2d(h, 2) if self.down else h


class Discriminator(nn.Module):
    """(image (B, 3, S, S) in [-1, 1], embedding (B, E)) -> score (B,): high = a real image of e."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = c = config
        widths = [c.width * m for m in c.mults]
        self.stem = spectral_norm(nn.Conv2d(3, c.width, c.patch, stride=c.patch))  # reads the 2x2 patches
        blocks, channels = [], c.width
        for level, w in enumerate(widths):
            for b in range(c.blocks):
                blocks.append(DownBlock(channels, w, down=level < len(widths) - 1 and b == c.blocks - 1))
                channels = w
        self.blocks = nn.Sequential(*blocks)
        self.psi = spectral_norm(nn.Linear(channels, 1))
        self.project = spectral_norm(nn.Linear(c.embed_dim, channels, bias=False))

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """phi(x): images (B, 3, S, S) -> (B, F), ReLU then a sum over positions (as Miyato et al.)."""
        return F.relu(self.blocks(self.stem(images))).sum(dim=(2, 3))

    def forward(self, images: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        return projection_logit(self.features(images), embeddings, self.psi, self.project)


class GAN(nn.Module):
    """Both players and the generator's moving average (what is sampled and shipped)."""

    def __init__(self, config: GANConfig):
        super().__init__()
        self.config = config
        self.generator, self.discriminator = Generator(config), Discriminator(config)
        self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)

    def after_step(self) -> None:
        """Called by the Trainer after every update."""
        ema_update(self.generator_ema, self.generator, self.config.ema)


def gan_step(gan: GAN, optimizer: torch.optim.Optimizer, real: torch.Tensor, embeddings: torch.Tensor,
             noise: torch.Tensor) -> torch.Tensor:
    """One alternating update: D on real vs fake images, then G against the updated D.

    real (B, 3, S, S) in [-1, 1], embeddings (B, E), noise (B, Z); one optimizer holds both
    players: Adam skips parameters without a gradient, so each half moves one player only.
    Returns the two losses (2,) = (D's, G's).
    """
    G, D = gan.generator, gan.discriminator
    fake = G(noise, embeddings)  # (B, 3, S, S); the same fakes serve both halves
    d_loss = discriminator_loss(D(real, embeddings), D(fake.detach(), embeddings))  # detached: no G gradient
    optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    optimizer.step()
    D.requires_grad_(False)  # G's loss flows *through* D, but D must not move
    g_loss = generator_loss(D(fake, embeddings))
    optimizer.zero_grad(set_to_none=True)
    g_loss.backward()
    optimizer.step()
    D.requires_grad_(True)
    return torch.stack([d_loss.detach(), g_loss.detach()])


# ----------------------------------------------------------------------------- training
GAN_TRAIN = TrainConfig(steps=3000, batch_size=64, lr=2e-4, warmup=100, weight_decay=0.0, eval_every=50,
                        save_every=25)  # frequent saves: a run stopped early keeps nearly all its steps


def train_gan(clip, model_config: GANConfig | None = None, config: TrainConfig = GAN_TRAIN, out=None,
              resume: bool = False, force: bool = False, progress: bool = True, judge=None,
              budget: dict | None = None):
    """Train the GAN on the decoder's batches (same renders per step and seed) and frozen-CLIP embeddings.

    judge: if given, every eval_every steps the EMA generator draws 64 evaluation prompts from
    their renders' embeddings and metrics["evals"] records [step, seconds, seen_all, heldout_all].
    budget: recorded in the metrics (see measure_budget). Returns (gan, trainer).
    """
    from minidalle.world import make_dataset

    torch.manual_seed(config.seed)
    clip = clip.eval().requires_grad_(False)
    gan = GAN(model_config or GANConfig(embed_dim=clip.config.embed_dim)).to(clip.device)
    groups = [{"params": list(gan.generator.parameters())}, {"params": list(gan.discriminator.parameters())}]
    optimizer = torch.optim.Adam(groups, lr=config.lr, betas=gan.config.betas, weight_decay=config.weight_decay)

    def step_fn(trainer, step):
        batch = make_dataset(config.batch_size, "train", seed=config.seed * 1_000_003 + step + 17)
        with torch.no_grad():
            embeddings = clip.encode_image(batch.images)
        generator = torch.Generator(clip.device).manual_seed(config.seed * 1_000_003 + step)
        noise = torch.randn(config.batch_size, gan.config.noise_dim, generator=generator, device=clip.device)
        return gan_step(trainer.model, trainer.optimizer, batch.images.to(clip.device) * 2 - 1, embeddings, noise)

    evaluate, evals = None, []
    if judge is not None:
        from minidalle.evaluate import evaluation_prompts, score_prompts

        prompts, _, renders = evaluation_prompts(64, seed=1)
        with torch.no_grad():
            eval_embeddings = clip.encode_image(renders)

        def evaluate(model):
            scores = score_prompts(judge.predict(model.generator_ema.sample(eval_embeddings, seed=0)), prompts)
            latest = {k: scores[k] for k in ("seen_all", "heldout_all", "seen_shape", "seen_color")}
            evals.append([trainer.step, round(trainer.seconds, 1), latest["seen_all"], latest["heldout_all"]])
            return latest | {"evals": evals, "eval_prompts": len(prompts), "budget": budget}

    trainer = Trainer(gan, None, config, "gan", save=save_gan, evaluate=evaluate, out=out, resume=resume,
                      force=force, progress=progress, optimizer=optimizer, step_fn=step_fn)
    if trainer.step:  # resumed: keep the evaluations of the first run
        evals += checkpoints.read_meta(out, "gan")["metrics"].get("evals", [])
    trainer.metrics = {"budget": budget}
    return trainer.run(), trainer


def measure_budget(clip, decoder, gan_config: GANConfig | None = None, gan_train: TrainConfig = GAN_TRAIN,
                   warmup: int = 3, steps: int = 20, rounds: int = 2, threads: int | None = None) -> dict:
    """GAN steps that cost the decoder's training seconds: steps = decoder steps * ratio of the median
    seconds per step of a fresh decoder (the shipped config and recorded recipe) and a fresh GAN,
    timed in turn `rounds` times on the decoder's threads, after `warmup` steps each."""
    from minidalle.train import DECODER_TRAIN, train_decoder

    recorded = decoder.metrics.get("train_config")
    decoder_train = TrainConfig(**recorded) if recorded else DECODER_TRAIN
    threads = threads or decoder.metrics.get("torch_threads") or torch.get_num_threads()
    before, times = torch.get_num_threads(), {"decoder": [], "gan": []}
    torch.set_num_threads(threads)
    try:
        for _ in range(rounds):
            _, trainer = train_decoder(clip, decoder.config, replace(decoder_train, steps=warmup + steps),
                                       progress=False)
            times["decoder"] += trainer.step_seconds[warmup:]
            _, trainer = train_gan(clip, gan_config, replace(gan_train, steps=warmup + steps), progress=False)
            times["gan"] += trainer.step_seconds[warmup:]
    finally:
        torch.set_num_threads(before)
    decoder_s, gan_s = statistics.median(times["decoder"]), statistics.median(times["gan"])
    return {"decoder_steps": decoder_train.steps, "decoder_train_seconds": decoder.metrics.get("train_seconds"),
            "decoder_seconds_per_step": round(decoder_s, 5), "gan_seconds_per_step": round(gan_s, 5),
            "steps": max(1, round(decoder_train.steps * decoder_s / gan_s)), "threads": threads,
            "timed_steps": len(times["gan"])}


def train_gan_like_decoder(folder, out=None, resume: bool = False, force: bool = False,
                           device: str | torch.device = "cpu", steps: int | None = None, progress: bool = True,
                           threads: int | None = None):
    """`python -m minidalle train gan`: as many steps as cost the decoder's CPU seconds (measured
    now on `threads`, default the decoder's, or kept from the run being resumed), with the judge's
    curve when `folder` has a judge."""
    from pathlib import Path

    from minidalle.clip import load_clip
    from minidalle.decoder import load_decoder
    from minidalle.judge import load_judge

    folder = Path(folder)
    out = folder / "gan" if out is None else out
    checkpoints.ensure_writable(out, force or resume)  # fail before a minute of timing
    clip = load_clip(folder / "clip", device)
    budget = None
    if resume and checkpoints.paths(out)[1].exists():
        metrics = checkpoints.read_meta(out, "gan")["metrics"]
        steps, budget = metrics["train_config"]["steps"], metrics.get("budget")
    elif steps is None:
        # a short timing (6 steps each after 1 of warm-up): on a busy machine every step takes many seconds
        budget = measure_budget(clip, load_decoder(folder / "decoder", device), warmup=1, steps=6, rounds=1,
                                threads=threads)
        steps = budget["steps"]
    judge = load_judge(folder / "judge", device) if checkpoints.paths(folder / "judge")[1].exists() else None
    return train_gan(clip, config=replace(GAN_TRAIN, steps=steps), out=out, resume=resume, force=force,
                     progress=progress, judge=judge, budget=budget)


# ----------------------------------------------------------------------------- checkpoints
def save_gan(model: GAN, path, metrics: dict | None = None, step: int | None = None):
    """Write the EMA generator and the config (the discriminator stays in the .state file, for resume)."""
    return checkpoints.save(path, "gan", model.config, model.generator_ema.state_dict(), metrics, step)


def load_gan(path=None, device: str | torch.device = "cpu") -> Generator:
    """The shipped GAN's EMA generator (data/checkpoints/gan), or one saved at `path`, in eval mode."""
    model, meta = checkpoints.load_module(path or "gan", "gan", GANConfig, Generator)
    model.metrics = meta.get("metrics", {})
    return model.to(device)
