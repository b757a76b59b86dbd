"""The flow decoder: the diffusion decoder's U-Net and conditioning, trained by flow matching.

Everything but the objective is the decoder's (minidalle.decoder): the same U-Net, the same CLIP
image embedding as condition (added to the time embedding and as context tokens), the same
classifier-free guidance with the same drop rate. What changes: the network predicts the
velocity noise - x0 along the straight path x_t = (1 - t) x0 + t noise (minidalle.flow), and
sampling solves that ODE with Euler or Heun steps instead of DDIM.
Shape legend: B batch, E CLIP embedding width, S image side.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from minidalle import checkpoints, flow
from minidalle.decoder import Decoder, DecoderConfig, load_decoder
from minidalle.unet import UNet, UNetConfig


@dataclass(frozen=True)
class FlowDecoderConfig:
    unet: UNetConfig = field(default_factory=UNetConfig)
    drop_condition: float = 0.1  # classifier-free guidance: train unconditionally this often
    guidance: float = 2.0  # default sampling guidance
    steps: int = 16  # default sampling steps
    method: str = "euler"  # default ODE sampler: "euler" or "heun"
    # The U-Net embeds time with sinusoids made for integer timesteps 0..999; t in [0, 1] is fed as
    # t * time_scale so that the same frequencies cover it (as Esser et al. 2024 do for SD3).
    time_scale: float = 1000.0

    @classmethod
    def tiny(cls) -> "FlowDecoderConfig":
        return cls(unet=UNetConfig.tiny(), steps=4)

    @classmethod
    def like(cls, decoder: DecoderConfig, **changes) -> "FlowDecoderConfig":
        """The diffusion decoder's U-Net, condition dropping and guidance, with flow sampling defaults."""
        return cls(**{"unet": decoder.unet, "drop_condition": decoder.drop_condition, "guidance": decoder.guidance,
                      **changes})

    def __post_init__(self):
        flow._check_method(self.method)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {self.steps!r}")


class FlowDecoder(nn.Module):
    """U-Net predicting velocities: `loss(images, embeddings)` to train, `sample(embeddings)` to draw."""

    # The decoder's conditioning, reused as it is: the same checks and classifier-free guidance.
    _check_embeddings = Decoder._check_embeddings
    guided = Decoder.guided
    device = Decoder.device

    def __init__(self, config: FlowDecoderConfig):
        super().__init__()
        self.config = config
        self.unet = UNet(config.unet)

    def loss(self, images: torch.Tensor, embeddings: torch.Tensor, generator: torch.Generator | None = None,
             noise: torch.Tensor | None = None):
        """images (B, 3, S, S) in [0, 1], embeddings (B, E) -> MSE of the velocity (Lipman et al. 2023, eq. 23).

        noise (B, 3, S, S): the other end of each path (default: fresh noise); reflow passes the
        noise each image was sampled from (Liu et al. 2023, sec. 2.2).
        """
        self._check_embeddings(embeddings)
        x0 = images.to(self.device) * 2 - 1  # the model works in [-1, 1]
        B = x0.shape[0]
        t = torch.rand(B, device=self.device, generator=generator)  # uniform in [0, 1) (Liu et al. 2023)
        if noise is None:
            noise = torch.randn(x0.shape, device=self.device, generator=generator)
        elif noise.shape != x0.shape:
            raise ValueError(f"noise shape {tuple(noise.shape)} must equal the images' shape {tuple(x0.shape)}")
        drop = torch.rand(B, device=self.device, generator=generator) < self.config.drop_condition
        cond = torch.where(drop[:, None], self.unet.null_embedding.expand(B, -1), embeddings.to(self.device))
        prediction = self.unet(flow.interpolate(x0, noise, t), t * self.config.time_scale, cond)
        return F.mse_loss(prediction, flow.velocity_target(x0, noise))

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, embeddings: torch.Tensor, guidance: float,
                 clip_x0: bool = True) -> torch.Tensor:
        """Guided velocity (B, 3, S, S) at x_t (B, 3, S, S), t (B,) in [0, 1]; clip_x0 keeps its x0 guess in [-1, 1]."""
        velocity = self.guided(x_t, t * self.config.time_scale, embeddings, guidance)
        return flow.clip_velocity(x_t, t, velocity) if clip_x0 else velocity

    def _settings(self, embeddings, guidance, steps, method):
        self._check_embeddings(embeddings)
        guidance = self.config.guidance if guidance is None else guidance
        steps = self.config.steps if steps is None else steps
        method = self.config.method if method is None else method
        flow.time_grid(steps)  # a clear error for a bad number of steps
        flow._check_method(method)
        return embeddings.to(self.device, torch.float32), guidance, steps, method

    @torch.no_grad()
    def sample(self, embeddings: torch.Tensor, seed: int | torch.Generator = 0, guidance: float | None = None,
               steps: int | None = None, method: str | None = None, eta: float = 0.0,
               x_T: torch.Tensor | None = None, callback=None, progress: bool = False) -> torch.Tensor:
        """embeddings (B, E) -> images (B, 3, S, S) in [0, 1] by solving the flow ODE from noise (t = 1) to data.

        x_T (B, 3, S, S): the starting noise (default: drawn from the seed); eta > 0 (Euler only)
        adds fresh noise at every step, as DDIM's eta. Same keywords as Decoder.sample, plus method.
        """
        embeddings, guidance, steps, method = self._settings(embeddings, guidance, steps, method)
        generator = seed if isinstance(seed, torch.Generator) else torch.Generator(self.device).manual_seed(seed)
        size = self.config.unet.image_size
        x = flow.sample(lambda x_t, t: self.velocity(x_t, t, embeddings, guidance), (len(embeddings), 3, size, size),
                        steps, generator, method, eta=eta, x_1=x_T, callback=callback, progress=progress)
        return ((x + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def invert(self, images: torch.Tensor, embeddings: torch.Tensor, guidance: float | None = None,
               steps: int | None = None, method: str | None = None) -> torch.Tensor:
        """The noise x_1 (B, 3, S, S) that `sample(embeddings, x_T=x_1)` carries back to images (B, 3, S, S):
        the same ODE solved from data (t = 0) to noise (t = 1)."""
        embeddings, guidance, steps, method = self._settings(embeddings, guidance, steps, method)
        x0 = images.to(self.device, torch.float32) * 2 - 1
        return flow.integrate(lambda x_t, t: self.velocity(x_t, t, embeddings, guidance), x0, steps, method,
                              start=0.0, end=1.0)


@torch.no_grad()
def reflow_pairs(model: FlowDecoder, embeddings: torch.Tensor, seed: int = 0, batch_size: int = 256,
                 **sampler) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise (N, 3, S, S) and the images (N, 3, S, S) in [0, 1] the model carries it to, for embeddings (N, E):
    the couplings that reflow straightens (Liu et al. 2023, algorithm 1). sampler: guidance, steps, method."""
    size = model.config.unet.image_size
    generator = torch.Generator(model.device).manual_seed(seed)
    noise = torch.randn((len(embeddings), 3, size, size), generator=generator, device=model.device)
    images = torch.cat([model.sample(embeddings[i:i + batch_size], x_T=noise[i:i + batch_size], **sampler)
                        for i in range(0, len(embeddings), batch_size)])
    return noise, images


def build(config: FlowDecoderConfig) -> FlowDecoder:
    return FlowDecoder(config)


def save_flow_decoder(model: FlowDecoder, path, metrics: dict | None = None, step: int | None = None):
    return checkpoints.save(path, "flow_decoder", model.config, model.state_dict(), metrics, step)


def load_flow_decoder(path=None, device: str | torch.device = "cpu") -> FlowDecoder:
    """The shipped flow decoder (data/checkpoints/flow_decoder, EMA weights), or one saved at `path`."""
    model, meta = checkpoints.load_module(path or "flow_decoder", "flow_decoder", FlowDecoderConfig, build)
    model.metrics = meta.get("metrics", {})
    return model.to(device)


def load_any_decoder(path, device: str | torch.device = "cpu") -> Decoder | FlowDecoder:
    """A diffusion or a flow decoder, whichever the checkpoint at `path` holds (the "kind" in its JSON)."""
    _, json_path = checkpoints.paths(path)
    try:
        kind = json.loads(json_path.read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        kind = None  # missing or corrupt: load_decoder says so clearly
    return load_flow_decoder(path, device) if kind == "flow_decoder" else load_decoder(path, device)
