"""Training loops: AdamW with warm-up and cosine decay, EMA, progress bars, atomic
checkpoints and resume. One generic loop; each stage supplies its loss and batches.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Callable

import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from minidalle import checkpoints, distributed


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


def ema_update(ema_model: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * weights, parameter by parameter (an exponential moving average)."""
    with torch.no_grad():
        for ema, p in zip(ema_model.parameters(), model.parameters()):
            ema.lerp_(p, 1 - decay)


class Trainer:
    """Runs `loss_fn(model, step) -> scalar loss` for config.steps steps, with evaluation,
    checkpoints (`save(model, path, metrics, step)`) and resume.

    With config.ema, `self.ema_model` holds the averaged weights, which are what get saved.
    A model with two players (a GAN) passes its own `optimizer` and a `step_fn(trainer, step)` that
    makes the whole update and returns the losses to log (a tensor of one or more values); the
    schedule, EMA, history, checkpoints and resume stay the Trainer's (one process only).
    Under torchrun the loss runs through DistributedDataParallel; rank 0 alone shows progress,
    evaluates and writes checkpoints (`minidalle.distributed`).
    """

    def __init__(self, model: torch.nn.Module, loss_fn: Callable | None, config: TrainConfig, kind: str,
                 save: Callable | None = None, evaluate: Callable | None = None, out=None,
                 resume: bool = False, force: bool = False, progress: bool = True,
                 optimizer: torch.optim.Optimizer | None = None, step_fn: Callable | None = None):
        self.model, self.loss_fn, self.config, self.kind = model, loss_fn, config, kind
        self.save_fn, self.out, self.step_fn = save, out, step_fn
        self.evaluate, self.progress = (evaluate, progress) if distributed.is_main() else (None, False)
        self.optimizer = optimizer or torch.optim.AdamW(model.parameters(), lr=config.lr,
                                                        weight_decay=config.weight_decay)
        self.ema_model = copy.deepcopy(model).eval().requires_grad_(False) if config.ema else None
        self.step, self.history, self.metrics, self.seconds = 0, [], {}, 0.0
        self.step_seconds: list[float] = []  # this session's time per step (not saved), for budget comparisons
        if out is not None:
            if resume and checkpoints.paths(out)[1].exists():
                self._resume()
            elif not resume:
                checkpoints.ensure_writable(out, force)
        self.forward = distributed.wrap(model, loss_fn)  # step -> loss; after resume: DDP copies rank 0's weights

    def _state_path(self):
        weights, _ = checkpoints.paths(self.out)
        return weights.with_name(weights.name.replace(".safetensors", ".state.safetensors"))

    def _resume(self) -> None:
        meta = checkpoints.read_meta(self.out, self.kind)
        state_path = self._state_path()
        if not state_path.exists():
            raise checkpoints.CheckpointError(f"cannot resume: {state_path} (optimizer state) is missing")
        self._check_resumed_config(meta)
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

    def _check_resumed_config(self, meta: dict) -> None:
        """Refuse to resume a checkpoint saved with another model config than this run's: the weights could
        fit (e.g. the decoder's noise schedule changes no shape) and the run would go on as another model."""
        config = getattr(self.model, "config", None)
        if not dataclasses.is_dataclass(config) or not isinstance(meta.get("config"), dict):
            return
        saved = checkpoints.config_from_dict(type(config), meta["config"])
        differ = [f.name for f in dataclasses.fields(config) if getattr(saved, f.name) != getattr(config, f.name)]
        if differ:
            raise checkpoints.CheckpointError(
                f"cannot resume {self.out}: it was saved with another {type(config).__name__} ("
                + ", ".join(f"{name}: saved {getattr(saved, name)!r}, now {getattr(config, name)!r}" for name in differ)
                + "); resume with the settings it was trained with, or train anew with --force")

    def sampling_model(self) -> torch.nn.Module:
        return self.ema_model if self.ema_model is not None else self.model

    def save(self) -> None:
        if self.out is None or self.save_fn is None or not distributed.is_main():
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
            if self.step_fn is not None:
                loss = self.step_fn(self, self.step)  # the caller's own update (e.g. a GAN's two players)
            else:
                loss = self.forward(self.step)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.grad_clip)
                self.optimizer.step()
            if hasattr(self.model, "after_step"):
                self.model.after_step()
            if self.ema_model is not None:
                ema_update(self.ema_model, self.model, config.ema)
            self.step += 1
            self.step_seconds.append(time.perf_counter() - start)
            self.seconds += self.step_seconds[-1]
            # one loss (averaged over processes), or several (a step_fn's, one process)
            logged = ([round(v, 5) for v in loss.detach().flatten().tolist()] if loss.numel() > 1
                      else [round(distributed.mean_loss(loss), 5)])
            shown = " ".join(f"{v:.4f}" for v in logged)
            bar.update(1)
            bar.set_postfix(loss=shown)
            self.history.append([self.step, *logged])
            if self.evaluate is not None and (self.step % config.eval_every == 0 or self.step == config.steps):
                self.metrics = self.evaluate(self.sampling_model())
                self.sampling_model().eval()
                self.model.train()
                bar.set_postfix(loss=shown, **{k: f"{v:.3f}" for k, v in self.metrics.items()
                                               if isinstance(v, float)})
            if self.step % config.save_every == 0 or self.step == config.steps:
                self.save()
        bar.close()
        distributed.barrier()  # the other processes wait for rank 0's last checkpoint
        self.model.eval()
        return self.sampling_model()


# ----------------------------------------------------------------------------- stages
CLIP_TRAIN = TrainConfig(steps=800, batch_size=128, lr=2e-3, warmup=100, eval_every=200, save_every=200)


def clip_metrics(model, n: int = 1024, split: str = "heldout", seed: int = 12345) -> dict:
    """Retrieval top-1 (batches of 128, caption-text match) and zero-shot accuracy per attribute."""
    from minidalle.clip import ATTRIBUTES, retrieval_accuracy, zero_shot_attributes
    from minidalle.world import make_dataset

    data = make_dataset(n, split, seed=seed, image_size=model.config.vision.image_size)
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


def clip_batch(step: int, config: TrainConfig = CLIP_TRAIN, partial: bool = True):
    """The batch `train_clip` trains on at `step` (fresh renders of the train split, seeded by step)."""
    from minidalle.world import make_dataset

    return make_dataset(config.batch_size, "train", seed=config.seed * 1_000_003 + step, partial=partial)


def train_clip(model_config=None, config: TrainConfig = CLIP_TRAIN, out=None, resume: bool = False,
               force: bool = False, progress: bool = True, eval_size: int = 512,
               device: str | torch.device | None = None, model=None, partial: bool = True, data=None):
    """Train CLIP on fresh batches of the train split (full and partial captions).

    out: checkpoint path (e.g. minidalle.CHECKPOINT_DIR / "clip"), None to keep it in memory.
    device: where to train ("cuda" on a GPU, "auto"; default "cpu"); the prior and decoder train where
    their CLIP is.
    model: a CLIP to train in place (instead of a new one from model_config), e.g. one whose
    temperature is frozen with `model.logit_scale.requires_grad_(False)`: frozen parameters stay put.
    partial: False trains on full captions only (True: random partial captions, as the recipe).
    data: an ImageFolder (`minidalle.data.load_folder`) to train on instead of the world; give a
    model_config whose tokenizer reads its captions (`minidalle.sources.clip_config_for`).
    Returns (model, trainer); trainer.history holds [step, loss] pairs.
    """
    from minidalle.clip import CLIP, CLIPConfig, save_clip
    from minidalle.sources import folder_clip_metrics, training_batch

    torch.manual_seed(config.seed)
    if model is None:
        model = CLIP(model_config or CLIPConfig()).to(distributed.resolve_device(device or "cpu"))
    elif model_config is not None:
        raise ValueError("give train_clip either model_config (a new CLIP) or model (one to train), not both")
    elif not isinstance(model, CLIP):
        raise TypeError(f"model must be a minidalle.clip.CLIP, got {type(model).__name__}")
    elif device is not None:
        model = model.to(distributed.resolve_device(device))

    def loss_fn(model, step):
        images, captions = training_batch(data, config, step, model.config.vision.image_size, partial=partial)
        return model(images.to(model.device), captions)

    def evaluate(m):  # a folder has no held-out compositions: measured on its own pairs
        return folder_clip_metrics(m, data, eval_size) if data is not None else clip_metrics(m, eval_size)

    trainer = Trainer(model, loss_fn, config, "clip", save=save_clip, out=out, resume=resume, force=force,
                      progress=progress, evaluate=evaluate if eval_size else None)
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
DECODER_TRAIN = TrainConfig(steps=2400, batch_size=32, lr=2e-3, warmup=100, ema=0.995, eval_every=500,
                            save_every=250)


def embedding_bank(clip, n: int, seed: int, split: str = "train", batch: int = 1024):
    """Render n scenes and encode them once with the frozen CLIP: (image embeddings (n, E), scenes)."""
    from minidalle.world import make_dataset

    data = make_dataset(n, split, seed=seed, image_size=clip.config.vision.image_size)
    with torch.no_grad():
        emb = torch.cat([clip.encode_image(data.images[i:i + batch]) for i in range(0, n, batch)])
    return emb, data.attributes


def prior_metrics(prior, clip, n: int = 512, seed: int = 54321) -> dict:
    """Mean cosine of the prior's embedding to the true image embedding, held-out compositions."""
    from minidalle.world import make_dataset

    data = make_dataset(n, "heldout", seed=seed, image_size=clip.config.vision.image_size)
    with torch.no_grad():
        image, text = clip.encode_image(data.images), clip.encode_text(data.captions)
        predicted = prior.sample(text, seed=0)
    return {"heldout_prior_cosine": (predicted * image).sum(-1).mean().item(),
            "heldout_text_cosine": (text * image).sum(-1).mean().item()}


def train_prior(clip, model_config=None, config: TrainConfig = PRIOR_TRAIN, out=None, resume: bool = False,
                force: bool = False, progress: bool = True, bank_size: int = 20_000, eval_size: int = 256,
                data=None):
    """Train the diffusion prior against a frozen CLIP: (random partial caption -> image embedding).

    Image embeddings come from a bank rendered once (images are the costly part); every step
    draws new caption variants for them, so the prior sees each image under many prompts.
    data: an ImageFolder instead: the bank is its images, each with its own caption.
    """
    import numpy as np

    from minidalle.prior import DiffusionPrior, PriorConfig, save_prior
    from minidalle.sources import folder_prior_metrics, prior_pairs
    from minidalle.world import random_caption_variant

    torch.manual_seed(config.seed)
    clip = clip.eval().requires_grad_(False)
    model = DiffusionPrior(model_config or PriorConfig(embed_dim=clip.config.embed_dim)).to(clip.device)
    if data is not None:
        bank, draw = prior_pairs(clip, data, config)
    else:
        bank, scenes = embedding_bank(clip, bank_size, seed=config.seed + 7)
    model.set_statistics(bank)

    embed_text = _cached_text_encoder(clip)

    def loss_fn(model, step):
        if data is not None:
            return model.loss(*draw(step))
        rng = np.random.default_rng([config.seed, distributed.rank_seed(step)])
        index = rng.integers(len(scenes), size=distributed.local_batch_size(config.batch_size))
        captions = [random_caption_variant(scenes[i], rng) for i in index]
        return model.loss(embed_text(captions), bank[torch.from_numpy(index)].to(model.device))

    def evaluate(m):
        return folder_prior_metrics(m, clip, data, eval_size) if data is not None else prior_metrics(m, clip, eval_size)

    trainer = Trainer(model, loss_fn, config, "prior", save=save_prior, out=out, resume=resume, force=force,
                      progress=progress, evaluate=evaluate if eval_size else None)
    return trainer.run(), trainer


def train_decoder(clip, model_config=None, config: TrainConfig = DECODER_TRAIN, out=None, resume: bool = False,
                  force: bool = False, progress: bool = True, data=None, condition: str = "image"):
    """Train the decoder on fresh renders of the train split (or an ImageFolder's images, `data`)
    and their frozen-CLIP embeddings.

    condition="text" trains the ablation of unCLIP §5.1 instead: the same renders, each paired
    with the CLIP *text* embedding of a random full or partial caption of it (no prior needed);
    with `data`, the folder's own captions.
    """
    from minidalle.decoder import Decoder, DecoderConfig, save_decoder
    from minidalle.unet import UNetConfig

    if condition not in ("image", "text"):
        raise ValueError(f"condition must be 'image' or 'text', not {condition!r}")
    torch.manual_seed(config.seed)
    clip = clip.eval().requires_grad_(False)
    model = Decoder(model_config or DecoderConfig(unet=UNetConfig(embed_dim=clip.config.embed_dim))).to(clip.device)
    loss_fn = decoder_loss(clip, config, data, condition)
    set_embedding_stats(model, loss_fn)  # a resumed run loads the saved statistics over these
    trainer = Trainer(model, loss_fn, config, "decoder", save=save_decoder,
                      out=out, resume=resume, force=force, progress=progress)
    trainer.metrics = {"condition": condition}  # saved with the checkpoint (the decoder has no evaluation)
    return trainer.run(), trainer


def recorded_config(metrics: dict, default: TrainConfig) -> TrainConfig:
    """The TrainConfig a checkpoint's metrics record under "train_config" (what it was trained with);
    fields it does not record come from default."""
    recorded = metrics.get("train_config", {})
    return TrainConfig(**{f.name: recorded.get(f.name, getattr(default, f.name))
                          for f in dataclasses.fields(TrainConfig)})


def decoder_loss(clip, config: TrainConfig, data=None, condition: str = "image"):
    """loss_fn(model, step) of the decoder's data stream, for any model with `loss(images, embeddings,
    generator)`: the same renders (or `data`'s images), CLIP embeddings and noise seeds at every step,
    so that the diffusion and the flow decoder see the same batches (notebook 11's race).

    condition="text": each image is paired with the CLIP text embedding of a caption instead (for
    renders, a random full or partial caption variant of its scene; notebook 08's ablation).
    loss_fn.batch(image_size, step) -> (images, embeddings) is the stream's batch at `step`.
    """
    import numpy as np

    from minidalle.sources import training_batch
    from minidalle.world import make_dataset, random_caption_variant

    embed_text = _cached_text_encoder(clip) if condition == "text" else None

    def step_seed(step):
        return distributed.rank_seed(config.seed * 1_000_003 + step)

    def batch(image_size, step):
        if condition == "text" and data is None:  # a caption drawn per render, as CLIP and the prior were trained
            renders = make_dataset(distributed.local_batch_size(config.batch_size), "train", seed=step_seed(step) + 17,
                                   image_size=image_size)
            rng = np.random.default_rng([config.seed, distributed.rank_seed(step)])
            return renders.images, embed_text([random_caption_variant(a, rng) for a in renders.attributes])
        images, captions = training_batch(data, config, step, image_size, offset=17)
        with torch.no_grad():
            return images, (embed_text(captions) if condition == "text" else clip.encode_image(images))

    def loss_fn(model, step):
        images, embeddings = batch(model.config.unet.image_size, step)
        return model.loss(images, embeddings, torch.Generator(model.device).manual_seed(step_seed(step)))
    loss_fn.batch = batch
    return loss_fn


STATS_STEP = 10**9  # set_embedding_stats reads the stream from here: no training run gets this far


def set_embedding_stats(model, loss_fn, samples: int = 2048) -> None:
    """For a U-Net with standardize=True: its embedding mean and std from `samples` embeddings of the
    training stream (its batches at steps 10^9, 10^9 + 1, ...: past any run; every process's, gathered).
    Any other model is left as it is."""
    if not model.config.unet.standardize:
        return
    parts, step = [], STATS_STEP
    while sum(len(p) for p in parts) * distributed.world_size() < samples:
        parts.append(loss_fn.batch(model.config.unet.image_size, step)[1].to(model.device))
        step += 1
    model.unet.set_embedding_stats(distributed.gather(torch.cat(parts)))  # (N, E), the same on every process


def train_flow_decoder(clip, model_config=None, config: TrainConfig | None = None, out=None, resume: bool = False,
                       force: bool = False, progress: bool = True, evaluate: Callable | None = None,
                       metrics: dict | None = None):
    """Train the flow decoder (notebook 11) on the decoder's data stream with the decoder's recipe.

    model_config: a FlowDecoderConfig (default: the shipped decoder's U-Net, FlowDecoderConfig.like);
    config: default DECODER_TRAIN, read when called; evaluate(model) -> dict every config.eval_every
    steps; metrics: saved with the checkpoint (e.g. how the step budget was set).
    """
    from minidalle.decoder import DecoderConfig
    from minidalle.flow_decoder import FlowDecoder, FlowDecoderConfig, save_flow_decoder
    from minidalle.unet import UNetConfig

    config = config or DECODER_TRAIN
    torch.manual_seed(config.seed)
    clip = clip.eval().requires_grad_(False)
    if model_config is None:  # what train_decoder builds by default
        model_config = FlowDecoderConfig.like(DecoderConfig(unet=UNetConfig(embed_dim=clip.config.embed_dim)))
    model = FlowDecoder(model_config).to(clip.device)
    extra = dict(metrics or {})  # kept next to every evaluation's figures
    loss_fn = decoder_loss(clip, config)
    set_embedding_stats(model, loss_fn)
    trainer = Trainer(model, loss_fn, config, "flow_decoder", save=save_flow_decoder, out=out,
                      resume=resume, force=force, progress=progress,
                      evaluate=(lambda m: dict(extra, **evaluate(m))) if evaluate else None)
    trainer.metrics = extra
    return trainer.run(), trainer


def train_reflow(teacher, noise: torch.Tensor, images: torch.Tensor, embeddings: torch.Tensor, config: TrainConfig,
                 guidance: float, out=None, force: bool = False, progress: bool = True):
    """Reflow (Liu et al. 2023, sec. 2.2): fine-tune a copy of a flow decoder on straight paths between
    noise (N, 3, S, S) and the images (N, 3, S, S) it drew from them for embeddings (N, E).

    The pairs were drawn with classifier-free guidance `guidance`, so the student learns the guided
    flow itself: it trains without dropping the condition and samples with guidance 1 (one network
    call a step instead of two).
    """
    from minidalle.flow_decoder import FlowDecoder, save_flow_decoder

    if not len(noise) == len(images) == len(embeddings):
        raise ValueError(f"need as many noises, images and embeddings, got {len(noise)}, {len(images)}, "
                         f"{len(embeddings)}")
    torch.manual_seed(config.seed)
    student = FlowDecoder(dataclasses.replace(teacher.config, drop_condition=0.0, guidance=1.0)).to(teacher.device)
    student.load_state_dict(teacher.state_dict())

    def loss_fn(model, step):
        seed = config.seed * 1_000_003 + step
        index = torch.randint(len(noise), (config.batch_size,), generator=torch.Generator().manual_seed(seed))
        return model.loss(images[index], embeddings[index], torch.Generator(model.device).manual_seed(seed),
                          noise=noise[index].to(model.device))

    trainer = Trainer(student, loss_fn, config, "flow_decoder", save=save_flow_decoder, out=out, force=force,
                      progress=progress)
    trainer.metrics = {"reflow": {"pairs": len(noise), "teacher_guidance": guidance}}
    return trainer.run(), trainer
