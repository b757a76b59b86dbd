"""Training loops: AdamW with warm-up and cosine decay, EMA, progress bars, atomic
checkpoints and resume. One generic loop; each stage supplies its loss and batches.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from minidalle import checkpoints


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    warmup: int = 100
    weight_decay: float = 0.05
    ema: float | None = None  # decay of an exponential moving average of the weights, or None
    eval_every: int = 250
    save_every: int = 250
    seed: int = 0
    grad_clip: float = 1.0

    @classmethod
    def tiny(cls) -> "TrainConfig":
        return cls(steps=5, batch_size=8, warmup=2, eval_every=5, save_every=5)


def learning_rate(step: int, config: TrainConfig) -> float:
    """Linear warm-up to lr, then cosine decay to 10 % of lr."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _optimizer_tensors(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """AdamW state flattened into named tensors (safetensors stores no nested dicts)."""
    flat = {}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            flat[f"{index}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return flat


def _restore_optimizer(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    state_dict = optimizer.state_dict()
    state: dict[int, dict] = {}
    for name, value in flat.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    state_dict["state"] = state
    optimizer.load_state_dict(state_dict)


class Trainer:
    """Runs `loss_fn(model, step) -> scalar loss` for config.steps steps, with evaluation,
    checkpoints (`save(model, path, metrics, step)`) and resume.

    With config.ema, `self.ema_model` holds the averaged weights, which are what get saved.
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable, config: TrainConfig, kind: str,
                 save: Callable | None = None, evaluate: Callable | None = None, out=None,
                 resume: bool = False, force: bool = False, progress: bool = True):
        self.model, self.loss_fn, self.config, self.kind = model, loss_fn, config, kind
        self.save_fn, self.evaluate, self.out, self.progress = save, evaluate, out, progress
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.ema_model = copy.deepcopy(model).eval().requires_grad_(False) if config.ema else None
        self.step, self.history, self.metrics, self.seconds = 0, [], {}, 0.0
        if out is not None:
            if resume and checkpoints.paths(out)[1].exists():
                self._resume()
            elif not resume:
                checkpoints.ensure_writable(out, force)

    def _state_path(self):
        weights, _ = checkpoints.paths(self.out)
        return weights.with_name(weights.name.replace(".safetensors", ".state.safetensors"))

    def _resume(self) -> None:
        meta = checkpoints.read_meta(self.out, self.kind)
        state_path = self._state_path()
        if not state_path.exists():
            raise checkpoints.CheckpointError(f"cannot resume: {state_path} (optimizer state) is missing")
        state = checkpoints.read_tensors(state_path)
        model_state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
        checkpoints.check_tensors(model_state, self.model.state_dict(), state_path)
        self.model.load_state_dict(model_state)
        _restore_optimizer(self.optimizer, {k[len("optimizer."):]: v for k, v in state.items()
                                            if k.startswith("optimizer.")})
        if self.ema_model is not None:
            self.ema_model.load_state_dict(checkpoints.load_tensors(self.out, self.ema_model.state_dict()))
        self.step = int(meta["step"])
        self.history = meta["metrics"].get("history", [])
        self.seconds = float(meta["metrics"].get("train_seconds", 0.0))

    def sampling_model(self) -> torch.nn.Module:
        return self.ema_model if self.ema_model is not None else self.model

    def save(self) -> None:
        if self.out is None or self.save_fn is None:
            return
        metrics = dict(self.metrics, history=self.history, train_seconds=round(self.seconds, 1),
                       torch_threads=torch.get_num_threads(), train_config=self.config.__dict__)
        state = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        state |= {f"optimizer.{k}": v for k, v in _optimizer_tensors(self.optimizer).items()}
        checkpoints._atomic_write(self._state_path(), lambda tmp: save_file(
            {k: v.detach().cpu().contiguous() for k, v in state.items()}, tmp))
        self.save_fn(self.sampling_model(), self.out, metrics, self.step)

    def run(self) -> torch.nn.Module:
        config = self.config
        bar = tqdm(total=config.steps, initial=self.step, desc=f"train {self.kind}", disable=not self.progress)
        self.model.train()
        while self.step < config.steps:
            start = time.perf_counter()
            for group in self.optimizer.param_groups:
                group["lr"] = learning_rate(self.step, config)
            loss = self.loss_fn(self.model, self.step)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
            self.optimizer.step()
            if hasattr(self.model, "after_step"):
                self.model.after_step()
            if self.ema_model is not None:
                with torch.no_grad():
                    for ema, p in zip(self.ema_model.parameters(), self.model.parameters()):
                        ema.lerp_(p, 1 - config.ema)
            self.step += 1
            self.seconds += time.perf_counter() - start
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
            self.history.append([self.step, round(loss.item(), 5)])
            if self.evaluate is not None and (self.step % config.eval_every == 0 or self.step == config.steps):
                self.metrics = self.evaluate(self.sampling_model())
                self.sampling_model().eval()
                self.model.train()
                bar.set_postfix(loss=f"{loss.item():.4f}", **{k: f"{v:.3f}" for k, v in self.metrics.items()
                                                               if isinstance(v, float)})
            if self.step % config.save_every == 0 or self.step == config.steps:
                self.save()
        bar.close()
        self.model.eval()
        return self.sampling_model()


# ----------------------------------------------------------------------------- stages
CLIP_TRAIN = TrainConfig(steps=800, batch_size=128, lr=2e-3, warmup=100, eval_every=200, save_every=200)


def clip_metrics(model, n: int = 1024, split: str = "heldout", seed: int = 12345) -> dict:
    """Retrieval top-1 (batches of 128, caption-text match) and zero-shot accuracy per attribute."""
    from minidalle.clip import ATTRIBUTES, retrieval_accuracy, zero_shot_attributes
    from minidalle.world import make_dataset

    data = make_dataset(n, split, seed=seed)
    with torch.no_grad():
        image_emb, text_emb = model.encode_image(data.images), model.encode_text(data.captions)
    batches = range(0, n, 128)
    metrics = {f"{split}_retrieval_top1": sum(
        retrieval_accuracy(image_emb[i:i + 128], text_emb[i:i + 128], data.captions[i:i + 128]) for i in batches)
        / len(batches)}
    predicted = zero_shot_attributes(model, data.images)
    for name in ATTRIBUTES:
        truth = [getattr(a, name) for a in data.attributes]
        metrics[f"{split}_zeroshot_{name}"] = sum(p == t for p, t in zip(predicted[name], truth)) / n
    metrics["logit_scale"] = model.clamped_scale().item()
    return metrics


def train_clip(model_config=None, config: TrainConfig = CLIP_TRAIN, out=None, resume: bool = False,
               force: bool = False, progress: bool = True, eval_size: int = 512,
               device: str | torch.device = "cpu"):
    """Train CLIP on fresh batches of the train split (full and partial captions).

    out: checkpoint path (e.g. minidalle.CHECKPOINT_DIR / "clip"), None to keep it in memory.
    device: where to train ("cuda" on a GPU); the prior and decoder train where their CLIP is.
    Returns (model, trainer); trainer.history holds [step, loss] pairs.
    """
    from minidalle.clip import CLIP, CLIPConfig, save_clip
    from minidalle.world import make_dataset

    torch.manual_seed(config.seed)
    model = CLIP(model_config or CLIPConfig()).to(device)

    def loss_fn(model, step):
        batch = make_dataset(config.batch_size, "train", seed=config.seed * 1_000_003 + step, partial=True)
        return model(batch.images.to(model.device), batch.captions)

    trainer = Trainer(model, loss_fn, config, "clip", save=save_clip, out=out, resume=resume, force=force,
                      progress=progress, evaluate=lambda m: clip_metrics(m, eval_size) if eval_size else {})
    return trainer.run(), trainer


def _cached_text_encoder(clip) -> Callable:
    """captions -> CLIP text embeddings (B, E), each distinct caption encoded once (the grammar has a few thousand)."""
    cache: dict[str, torch.Tensor] = {}

    def embed_text(captions):
        missing = [c for c in dict.fromkeys(captions) if c not in cache]
        if missing:
            with torch.no_grad():
                cache.update(zip(missing, clip.encode_text(missing)))
        return torch.stack([cache[c] for c in captions])  # (B, E)
    return embed_text


PRIOR_TRAIN = TrainConfig(steps=2000, batch_size=256, lr=5e-4, warmup=200, eval_every=500, save_every=500)
DECODER_TRAIN = TrainConfig(steps=3000, batch_size=64, lr=1e-3, warmup=100, ema=0.995, eval_every=500,
                            save_every=250)


def embedding_bank(clip, n: int, seed: int, split: str = "train", batch: int = 1024):
    """Render n scenes and encode them once with the frozen CLIP: (image embeddings (n, E), scenes)."""
    from minidalle.world import make_dataset

    data = make_dataset(n, split, seed=seed)
    with torch.no_grad():
        emb = torch.cat([clip.encode_image(data.images[i:i + batch]) for i in range(0, n, batch)])
    return emb, data.attributes


def prior_metrics(prior, clip, n: int = 512, seed: int = 54321) -> dict:
    """Mean cosine of the prior's embedding to the true image embedding, held-out compositions."""
    from minidalle.world import make_dataset

    data = make_dataset(n, "heldout", seed=seed)
    with torch.no_grad():
        image, text = clip.encode_image(data.images), clip.encode_text(data.captions)
        predicted = prior.sample(text, seed=0)
    return {"heldout_prior_cosine": (predicted * image).sum(-1).mean().item(),
            "heldout_text_cosine": (text * image).sum(-1).mean().item()}


def train_prior(clip, model_config=None, config: TrainConfig = PRIOR_TRAIN, out=None, resume: bool = False,
                force: bool = False, progress: bool = True, bank_size: int = 20_000, eval_size: int = 256):
    """Train the diffusion prior against a frozen CLIP: (random partial caption -> image embedding).

    Image embeddings come from a bank rendered once (images are the costly part); every step
    draws new caption variants for them, so the prior sees each image under many prompts.
    """
    import numpy as np

    from minidalle.prior import DiffusionPrior, PriorConfig, save_prior
    from minidalle.world import random_caption_variant

    torch.manual_seed(config.seed)
    clip = clip.eval().requires_grad_(False)
    model = DiffusionPrior(model_config or PriorConfig(embed_dim=clip.config.embed_dim)).to(clip.device)
    bank, scenes = embedding_bank(clip, bank_size, seed=config.seed + 7)
    model.set_statistics(bank)

    embed_text = _cached_text_encoder(clip)

    def loss_fn(model, step):
        rng = np.random.default_rng([config.seed, step])
        index = rng.integers(len(scenes), size=config.batch_size)
        captions = [random_caption_variant(scenes[i], rng) for i in index]
        return model.loss(embed_text(captions), bank[torch.from_numpy(index)].to(model.device))

    trainer = Trainer(model, loss_fn, config, "prior", save=save_prior, out=out, resume=resume, force=force,
                      progress=progress, evaluate=lambda m: prior_metrics(m, clip, eval_size) if eval_size else {})
    return trainer.run(), trainer


def train_decoder(clip, model_config=None, config: TrainConfig = DECODER_TRAIN, out=None, resume: bool = False,
                  force: bool = False, progress: bool = True, condition: str = "image"):
    """Train the decoder on fresh renders of the train split and their frozen-CLIP embeddings.

    condition="text" trains the ablation of unCLIP §5.1 instead: the same renders, each paired
    with the CLIP *text* embedding of a random full or partial caption of it (no prior needed).
    """
    import numpy as np

    from minidalle.decoder import Decoder, DecoderConfig, save_decoder
    from minidalle.unet import UNetConfig
    from minidalle.world import make_dataset, random_caption_variant

    if condition not in ("image", "text"):
        raise ValueError(f"condition must be 'image' or 'text', not {condition!r}")
    torch.manual_seed(config.seed)
    clip = clip.eval().requires_grad_(False)
    model = Decoder(model_config or DecoderConfig(unet=UNetConfig(embed_dim=clip.config.embed_dim))).to(clip.device)
    embed_text = _cached_text_encoder(clip)

    def loss_fn(model, step):
        batch = make_dataset(config.batch_size, "train", seed=config.seed * 1_000_003 + step + 17)
        if condition == "text":  # a caption drawn per render, as CLIP and the prior were trained
            rng = np.random.default_rng([config.seed, step])
            embeddings = embed_text([random_caption_variant(a, rng) for a in batch.attributes])
        else:
            with torch.no_grad():
                embeddings = clip.encode_image(batch.images)
        generator = torch.Generator(model.device).manual_seed(config.seed * 1_000_003 + step)
        return model.loss(batch.images, embeddings, generator)

    trainer = Trainer(model, loss_fn, config, "decoder", save=save_decoder, out=out, resume=resume, force=force,
                      progress=progress)
    trainer.metrics = {"condition": condition}  # saved with the checkpoint (the decoder has no evaluation)
    return trainer.run(), trainer
