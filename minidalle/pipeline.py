"""UnCLIP: prompt -> CLIP text embedding -> prior -> CLIP image embedding -> decoder -> image.

Ramesh et al. 2022. Also the manipulations of the paper's §3: DDIM inversion and variations
(§3.1), interpolations (§3.2) and text diffs (§3.3). Shape legend: N images, E embedding width.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from minidalle import CHECKPOINT_DIR
from minidalle.clip import CLIP, load_clip
from minidalle.decoder import Decoder
from minidalle.distributed import resolve_device
from minidalle.flow_decoder import FlowDecoder, load_any_decoder
from minidalle.prior import DiffusionPrior, load_prior
from minidalle.world import parse_prompt


def slerp(a: torch.Tensor, b: torch.Tensor, weight: float | torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between unit vectors a, b (..., E) (Shoemake 1985)."""
    a, b = F.normalize(a, dim=-1), F.normalize(b, dim=-1)
    cos = (a * b).sum(-1, keepdim=True).clamp(-1 + 1e-7, 1 - 1e-7)
    theta = torch.acos(cos)  # (..., 1) angle between a and b
    weight = torch.as_tensor(weight, dtype=a.dtype, device=a.device)
    if weight.dim() == 1:
        weight = weight[:, None]
    sin = torch.sin(theta)
    out = (torch.sin((1 - weight) * theta) * a + torch.sin(weight * theta) * b) / sin
    return F.normalize(out, dim=-1)


class UnCLIP:
    """The three trained stages chained, with seeds everywhere for reproducibility.

    world: the words prompts may use (None: the shapes world; a refined pipeline, notebook 10,
    carries a minidalle.concepts.World with its new words).
    """

    def __init__(self, clip: CLIP, prior: DiffusionPrior, decoder: Decoder | FlowDecoder, world=None):
        self.clip, self.prior, self.decoder = clip.eval(), prior.eval(), decoder.eval()
        self.world = world

    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "cpu",
                        decoder: str = "decoder") -> "UnCLIP":
        """Load clip, prior and decoder from a folder (default: the shipped data/checkpoints).

        device: "cpu", "cuda", "mps", or "auto" (CUDA, then Apple's MPS, then the CPU);
        decoder: the decoder checkpoint's name in the folder, e.g. "flow_decoder" (notebook 11),
        a diffusion or a flow decoder, whichever its JSON says.
        """
        folder, device = Path(path) if path is not None else CHECKPOINT_DIR, resolve_device(device)
        if not folder.is_dir():
            raise FileNotFoundError(f"no checkpoint folder at {folder}")
        return cls(load_clip(folder / "clip", device), load_prior(folder / "prior", device),
                   load_any_decoder(folder / decoder, device))

    # -------------------------------------------------------------- the stages
    def _prompts(self, prompts: str | Sequence[str]) -> list[str]:
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        for p in prompts:  # a bad prompt fails here, with the parser's (or the tokenizer's) clear message
            if self.clip.config.world_tokenizer or self.world is not None:  # (a grown world's words too)
                parse_prompt(p, world=self.world)
            else:  # a CLIP trained on your own captions: its tokenizer knows what it can read
                self.clip.tokenizer.encode(p)
        return prompts

    @torch.no_grad()
    def text_embedding(self, prompts: str | Sequence[str]) -> torch.Tensor:
        """CLIP text embeddings (N, E), unit norm."""
        return self.clip.encode_text(self._prompts(prompts))

    @torch.no_grad()
    def prior_embedding(self, prompts: str | Sequence[str], seed: int = 0, best_of: int | None = None,
                        guidance: float = 1.0) -> torch.Tensor:
        """The prior's image embeddings (N, E) for prompts: what an image of the prompt would embed to."""
        return self.prior.sample(self.text_embedding(prompts), seed=seed, best_of=best_of, guidance=guidance)

    @torch.no_grad()
    def image_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """CLIP image embeddings (N, E) of images (N, 3, 32, 32) in [0, 1]."""
        return self.clip.encode_image(images)

    @torch.no_grad()
    def decode(self, embeddings: torch.Tensor, seed: int = 0, guidance: float | None = None,
               steps: int | None = None, progress: bool = False, eta: float = 0.0,
               x_T: torch.Tensor | None = None) -> torch.Tensor:
        """Images (N, 3, 32, 32) in [0, 1] drawn by the decoder from image embeddings (N, E): by DDIM
        for a diffusion decoder, by its ODE sampler (config.method) for a flow decoder.

        x_T (N, 3, 32, 32): the starting noise (default: drawn from the seed); eta > 0 adds fresh
        noise at every DDIM step (the seed draws it).
        """
        return self.decoder.sample(embeddings, seed=seed, guidance=guidance, steps=steps, progress=progress,
                                   eta=eta, x_T=x_T)

    @torch.no_grad()
    def invert(self, images: torch.Tensor, guidance: float | None = None, steps: int | None = None) -> torch.Tensor:
        """x_T (N, 3, 32, 32) of images (N, 3, 32, 32) by DDIM inversion with the decoder (§3.1).

        The paper's bipartite latent is (image_embedding(images), x_T): decode(image_embedding(images),
        x_T=invert(images)) with eta = 0 and the same guidance and steps draws the images back.
        """
        return self.decoder.invert(images, self.image_embedding(images), guidance=guidance, steps=steps)

    # -------------------------------------------------------------- what users call
    @torch.no_grad()
    def generate(self, prompts: str | Sequence[str], seed: int = 0, guidance: float | None = None,
                 steps: int | None = None, best_of: int | None = None) -> torch.Tensor:
        """Text -> images (N, 3, 32, 32) in [0, 1]: decode(prior_embedding(prompts))."""
        return self.decode(self.prior_embedding(prompts, seed=seed, best_of=best_of), seed=seed,
                           guidance=guidance, steps=steps)

    @torch.no_grad()
    def variations(self, images: torch.Tensor, seed: int = 0, eta: float = 1.0, guidance: float | None = None,
                   steps: int | None = None) -> torch.Tensor:
        """Variations of images (N, 3, 32, 32) as in §3.1: invert each to (z, x_T), decode with DDIM's eta.

        eta sets how far they vary: 0 draws the images back, larger values add more fresh noise
        (drawn from the seed) on the way down; what z pins down stays.
        """
        embeddings = self.image_embedding(images)
        x_T = self.decoder.invert(images, embeddings, guidance=guidance, steps=steps)
        return self.decode(embeddings, seed=seed, guidance=guidance, steps=steps, eta=eta, x_T=x_T)

    def _embed(self, item, seed: int) -> torch.Tensor:
        if isinstance(item, str):
            return self.prior_embedding([item], seed=seed)[0]
        if torch.is_tensor(item):
            images = item[None] if item.dim() == 3 else item
            if len(images) != 1:
                raise ValueError(f"expected one image (3, 32, 32), got {tuple(item.shape)}")
            return self.image_embedding(images)[0]
        raise TypeError(f"expected a prompt (str) or an image tensor, got {type(item).__name__}")

    @torch.no_grad()
    def interpolate(self, a, b, steps: int = 8, seed: int = 0, guidance: float | None = None) -> torch.Tensor:
        """Images (steps, 3, 32, 32) along the slerp between the embeddings of a and b (§3.2).

        a, b: prompts or images. The decoder's noise is the same for every step, so only the
        embedding changes along the strip.
        """
        if steps < 2:
            raise ValueError(f"steps must be >= 2, got {steps}")
        ea, eb = self._embed(a, seed), self._embed(b, seed)
        path = slerp(ea.expand(steps, -1), eb.expand(steps, -1), torch.linspace(0, 1, steps))  # (steps, E)
        return self._decode_same_noise(path, seed, guidance)

    def _decode_same_noise(self, embeddings: torch.Tensor, seed: int, guidance: float | None) -> torch.Tensor:
        size = self.decoder.config.unet.image_size
        generator = torch.Generator(self.decoder.device).manual_seed(seed)
        x_T = torch.randn((1, 3, size, size), generator=generator, device=self.decoder.device)
        return self.decoder.sample(embeddings, seed=seed, guidance=guidance, x_T=x_T.expand(len(embeddings), -1, -1, -1))

    @torch.no_grad()
    def text_diff(self, image: torch.Tensor, from_text: str, to_text: str, amount: float = 0.5, seed: int = 0,
                  guidance: float | None = None) -> torch.Tensor:
        """Edit an image by a text difference (§3.3): move its embedding along
        normalize(text(to) - text(from)) by slerp with weight `amount`; returns (1, 3, 32, 32).

        An image is decoded from its own DDIM-inverted x_T (eta = 0), so amount = 0 gives it back;
        a prompt (str) instead of an image starts from the prior's embedding and the seed's noise.
        """
        z_image = self._embed(image, seed)
        text = self.text_embedding([from_text, to_text])
        direction = F.normalize(text[1] - text[0], dim=-1)
        edited = slerp(z_image[None], direction[None], amount)  # (1, E)
        if isinstance(image, str):
            return self._decode_same_noise(edited, seed, guidance)
        x_T = self.decoder.invert(image.reshape(1, *image.shape[-3:]), z_image[None], guidance=guidance)
        return self.decoder.sample(edited, seed=seed, guidance=guidance, x_T=x_T)
