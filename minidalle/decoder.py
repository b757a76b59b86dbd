"""The decoder: a diffusion model from a CLIP image embedding to a 32x32 image (unCLIP §2.1).

Trained to predict the clean image x0 (default; measured better than eps on a CPU budget,
see notebook 06), with classifier-free guidance: the embedding is dropped 10 % of the time
in training, and at sampling conditional and unconditional predictions are mixed.
Shape legend: B batch, E CLIP embedding width, S image side.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from minidalle import checkpoints
from minidalle.diffusion import (PREDICTIONS, SCHEDULES, ddim_invert, ddim_sample, make_schedule, min_snr_weight,
                                 q_sample, training_target)
from minidalle.unet import UNet, UNetConfig


@dataclass(frozen=True)
class DecoderConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    schedule: str = "linear"
    T: int = 1000
    prediction: str = "x0"  # "x0", "eps" or "v"
    drop_condition: float = 0.1  # classifier-free guidance: train unconditionally this often
    guidance: float = 2.0  # default sampling guidance (1 = plain conditional; 2 judged better on 512 prompts)
    steps: int = 16  # default DDIM steps (issue 14: no worse than 50 on the bench, a third of the time)
    min_snr: float = 0.0  # 0: plain MSE on the target; gamma > 0: Min-SNR-gamma loss weights (Hang et al. 2023)

    ADDED_FIELDS = ("min_snr",)  # checkpoints saved before it was added load with 0 (plain MSE)

    @classmethod
    def tiny(cls) -> "DecoderConfig":
        return cls(unet=UNetConfig.tiny(), T=100, steps=5)

    def __post_init__(self):
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"prediction must be one of {PREDICTIONS}, not {self.prediction!r}")
        if self.min_snr < 0:
            raise ValueError(f"min_snr must be 0 (off) or a positive gamma, not {self.min_snr}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, not {self.schedule!r}")


class Decoder(nn.Module):
    """U-Net + noise schedule: `loss(images, embeddings)` to train, `sample(embeddings)` to draw."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = config
        self.unet = UNet(config.unet)
        self.schedule = make_schedule(config.schedule, config.T)

    @property
    def device(self) -> torch.device:
        return self.unet.null_embedding.device

    def _check_embeddings(self, embeddings: torch.Tensor) -> None:
        E = self.config.unet.embed_dim
        if not torch.is_tensor(embeddings) or embeddings.dim() != 2 or embeddings.shape[1] != E:
            shape = tuple(embeddings.shape) if torch.is_tensor(embeddings) else type(embeddings).__name__
            raise ValueError(f"expected CLIP image embeddings of shape (N, {E}), got {shape}")

    def loss(self, images: torch.Tensor, embeddings: torch.Tensor, generator: torch.Generator | None = None):
        """images (B, 3, S, S) in [0, 1], embeddings (B, E) -> MSE of the prediction (DDPM eq. 14)."""
        self._check_embeddings(embeddings)
        x0 = images.to(self.device) * 2 - 1  # the model works in [-1, 1]
        B = x0.shape[0]
        t = torch.randint(0, self.config.T, (B,), device=self.device, generator=generator)
        noise = torch.randn(x0.shape, device=self.device, generator=generator)
        x_t = q_sample(x0, t, noise, self.schedule)
        drop = torch.rand(B, device=self.device, generator=generator) < self.config.drop_condition
        cond = torch.where(drop[:, None], self.unet.null_embedding.expand(B, -1), embeddings.to(self.device))
        target = training_target(self.config.prediction, self.schedule, x0, noise, t)
        if not self.config.min_snr:
            return F.mse_loss(self.unet(x_t, t, cond), target)
        per_sample = (self.unet(x_t, t, cond) - target).pow(2).flatten(1).mean(1)  # (B,)
        weight = min_snr_weight(self.config.prediction, self.schedule, t, self.config.min_snr)  # (B,)
        return (weight.to(per_sample.dtype) * per_sample).mean()

    def guided(self, x_t: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor, guidance: float) -> torch.Tensor:
        """Classifier-free guidance (Ho & Salimans 2022): uncond + g * (cond - uncond)."""
        if guidance == 1.0:
            return self.unet(x_t, t, embeddings)
        both = self.unet(torch.cat([x_t, x_t]), torch.cat([t, t]),
                         torch.cat([embeddings, self.unet.null_embedding.expand_as(embeddings)]))
        cond, uncond = both.chunk(2)
        return uncond + guidance * (cond - uncond)

    @torch.no_grad()
    def sample(self, embeddings: torch.Tensor, seed: int | torch.Generator = 0, guidance: float | None = None,
               steps: int | None = None, eta: float = 0.0, x_T: torch.Tensor | None = None,
               callback=None, progress: bool = False) -> torch.Tensor:
        """embeddings (B, E) -> images (B, 3, S, S) in [0, 1] by DDIM (Song et al. 2021)."""
        self._check_embeddings(embeddings)
        guidance = self.config.guidance if guidance is None else guidance
        steps = self.config.steps if steps is None else steps
        if not 1 <= steps <= self.config.T:
            raise ValueError(f"steps must be between 1 and {self.config.T}, got {steps}")
        generator = seed if isinstance(seed, torch.Generator) else torch.Generator(self.device).manual_seed(seed)
        embeddings = embeddings.to(self.device, torch.float32)
        size = self.config.unet.image_size
        x = ddim_sample(lambda x_t, t: self.guided(x_t, t, embeddings, guidance), (len(embeddings), 3, size, size),
                        self.schedule, steps, generator, eta, prediction=self.config.prediction, clip_x0=True,
                        x_T=x_T, callback=callback, progress=progress)
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def invert(self, images: torch.Tensor, embeddings: torch.Tensor, guidance: float | None = None,
               steps: int | None = None, progress: bool = False) -> torch.Tensor:
        """images (B, 3, S, S) in [0, 1], embeddings (B, E) -> x_T (B, 3, S, S) by DDIM inversion (unCLIP §3.1).

        sample(embeddings, x_T=x_T, eta=0) with the same guidance and steps draws the images back.
        """
        self._check_embeddings(embeddings)
        size = self.config.unet.image_size
        if not torch.is_tensor(images) or images.shape[1:] != (3, size, size) or len(images) != len(embeddings):
            shape = tuple(images.shape) if torch.is_tensor(images) else type(images).__name__
            raise ValueError(f"expected {len(embeddings)} images of shape (N, 3, {size}, {size}), got {shape}")
        guidance = self.config.guidance if guidance is None else guidance
        steps = self.config.steps if steps is None else steps
        if not 1 <= steps <= self.config.T:
            raise ValueError(f"steps must be between 1 and {self.config.T}, got {steps}")
        embeddings = embeddings.to(self.device, torch.float32)
        x0 = images.to(self.device, torch.float32) * 2 - 1  # the model works in [-1, 1]
        return ddim_invert(lambda x_t, t: self.guided(x_t, t, embeddings, guidance), x0, self.schedule, steps,
                           prediction=self.config.prediction, clip_x0=True, progress=progress)


def build(config: DecoderConfig) -> Decoder:
    return Decoder(config)


def save_decoder(model: Decoder, path, metrics: dict | None = None, step: int | None = None):
    return checkpoints.save(path, "decoder", model.config, model.state_dict(), metrics, step)


def load_decoder(path=None, device: str | torch.device = "cpu") -> Decoder:
    """The shipped decoder (data/checkpoints/decoder, EMA weights), or one saved at `path`."""
    model, meta = checkpoints.load_module(path or "decoder", "decoder", DecoderConfig, build)
    model.metrics = meta.get("metrics", {})
    return model.to(device)
