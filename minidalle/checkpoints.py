"""Checkpoints: safetensors weights + a JSON of config and metrics; validated, atomic, no pickle.

A checkpoint named `clip` is two files: `clip.safetensors` (tensors) and `clip.json`
({"format": 1, "kind": ..., "config": {...}, "metrics": {...}, "step": ...}).
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import typing
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from minidalle import CHECKPOINT_DIR

FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, or does not fit the model it is loaded into."""


def paths(name_or_path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, json) paths of a checkpoint given as a name ('clip') or a path (with or without suffix)."""
    p = Path(name_or_path)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    elif not p.parent.parts and not p.exists():
        p = CHECKPOINT_DIR / p  # a bare name means a shipped checkpoint
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def config_to_dict(config) -> dict:
    return dataclasses.asdict(config)


def config_from_dict(cls, data: dict):
    """Rebuild a (possibly nested) frozen dataclass config; unknown or missing keys are errors.

    Only fields a class lists in ADDED_FIELDS (added after checkpoints were shipped) may be missing:
    a tuple of names whose default means the old behaviour, or a dict {name: the old value}.
    """
    if not isinstance(data, dict):
        raise CheckpointError(f"config for {cls.__name__} must be a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown, missing = set(data) - names, names - set(data) - set(getattr(cls, "ADDED_FIELDS", ()))
    if unknown:
        raise CheckpointError(f"unknown {cls.__name__} fields {sorted(unknown)}; expected {sorted(names)}")
    if missing:  # a default could silently build another model (e.g. other heads: same shapes)
        raise CheckpointError(f"{cls.__name__} config lacks fields {sorted(missing)}")
    added = getattr(cls, "ADDED_FIELDS", ())
    kwargs = {name: old for name, old in added.items() if name not in data} if isinstance(added, dict) else {}
    for name, value in data.items():
        hint = hints[name]
        kwargs[name] = config_from_dict(hint, value) if dataclasses.is_dataclass(hint) else value
        if isinstance(kwargs[name], list):
            kwargs[name] = tuple(kwargs[name])
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"invalid {cls.__name__} config: {error}") from None


def _atomic_write(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)  # atomic on POSIX: readers never see a half-written file
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save(path, kind: str, config, tensors: dict[str, torch.Tensor], metrics: dict | None = None,
         step: int | None = None) -> Path:
    """Write weights then JSON atomically; returns the weights path."""
    weights_path, json_path = paths(path)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write(weights_path, lambda tmp: save_file(tensors, tmp))
    meta = {"format": FORMAT, "kind": kind, "config": config_to_dict(config), "metrics": metrics or {}, "step": step}
    text = json.dumps(meta, indent=2, sort_keys=True) + "\n"
    _atomic_write(json_path, lambda tmp: Path(tmp).write_text(text))
    return weights_path


def read_meta(path, kind: str) -> dict:
    """The JSON half of a checkpoint, checked for format and kind."""
    _, json_path = paths(path)
    if not json_path.exists():
        raise CheckpointError(f"no checkpoint at {json_path} (train one with `python -m minidalle train {kind}`)")
    try:
        meta = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise CheckpointError(f"{json_path} is corrupt: {error}") from None
    if (not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("kind") != kind
            or not isinstance(meta.get("config"), dict)):
        raise CheckpointError(f"{json_path} is not a minidalle {kind!r} checkpoint (format {FORMAT})")
    return meta


def read_tensors(weights_path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a safetensors file, with a clear error when missing or corrupt."""
    if not Path(weights_path).exists():
        raise CheckpointError(f"no weights at {weights_path}")
    try:
        return load_file(str(weights_path))
    except (SafetensorError, OSError, ValueError) as error:
        raise CheckpointError(f"{weights_path} is corrupt or truncated: {error}") from None


def check_tensors(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where) -> None:
    """Exactly the expected names and shapes, or a CheckpointError saying what differs."""
    missing, extra = set(expected) - set(tensors), set(tensors) - set(expected)
    if missing or extra:
        raise CheckpointError(f"{where} does not fit the model: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(extra)[:5]}")
    for name, ref in expected.items():
        if tensors[name].shape != ref.shape:
            raise CheckpointError(f"{where}: {name} has shape {tuple(tensors[name].shape)}, "
                                  f"the model expects {tuple(ref.shape)}")


def load_tensors(path, expected: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint, checked to have exactly the expected names and shapes."""
    weights_path, _ = paths(path)
    tensors = read_tensors(weights_path)
    check_tensors(tensors, expected, weights_path)
    return tensors


def load_module(path, kind: str, config_cls, build):
    """Build a module from a checkpoint's config with `build(config)` and load its weights."""
    meta = read_meta(path, kind)
    config = config_from_dict(config_cls, meta["config"])
    try:
        module = build(config)
    except (TypeError, ValueError, RuntimeError) as error:  # e.g. a width edited to a string
        raise CheckpointError(f"{paths(path)[1]}: cannot build a model from {config}: {error}") from None
    module.load_state_dict(load_tensors(path, module.state_dict()))
    return module.eval(), meta


def ensure_writable(path, force: bool = False) -> None:
    """Refuse to overwrite an existing checkpoint unless force=True (nothing saved is lost silently)."""
    weights_path, json_path = paths(path)
    if not force and (weights_path.exists() or json_path.exists()):
        raise FileExistsError(f"{weights_path} already exists; pass force=True (CLI: --force) to overwrite, "
                              f"resume=True (CLI: --resume) to continue it, or choose another path")
