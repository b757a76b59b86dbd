"""Your own images: a folder in the layout of Hugging Face's `imagefolder`, checked up front,
and the shapes world exported to such a folder.

    my_images/
      metadata.csv          file_name,text         (or metadata.jsonl: {"file_name": ..., "text": ...})
      0001.png              an image, any format Pillow reads
      more/0002.jpg         file_name may name a subfolder

Every row is checked before training starts, so bad data stops the run at once with a
message naming the metadata file, the line and the image (a missing file, an unreadable
image, an empty caption, a name listed twice, a caption the tokenizer cannot read) instead
of a crash deep inside a data loader. Images are loaded once, resized (shorter side) and
center-cropped to the model's size, and kept in memory as uint8: fine for tens of
thousands of small images. Shape legend: N images, B batch, S image side.
"""
from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from minidalle import distributed

METADATA = ("metadata.csv", "metadata.jsonl")
COLUMNS = ("file_name", "text")
MAX_LISTED = 10  # problems listed in one error; the rest are counted


class DataError(ValueError):
    """Bad data in an image folder; the message names the metadata file, the line and the image."""


class Row(NamedTuple):
    file_name: str
    text: str
    where: str  # e.g. "metadata.csv line 3"


# ----------------------------------------------------------------------------- metadata
def read_metadata(folder: str | os.PathLike) -> list[Row]:
    """The (file_name, text) rows of a folder's metadata.csv or metadata.jsonl, in file order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"no folder at {folder}")
    found = [folder / name for name in METADATA if (folder / name).is_file()]
    if not found:
        raise DataError(f"{folder} has no metadata.csv or metadata.jsonl; write one with the columns "
                        f"file_name (the image, relative to the folder) and text (its caption)")
    if len(found) > 1:
        raise DataError(f"{folder} has both metadata.csv and metadata.jsonl; keep one")
    path = found[0]
    try:
        rows = _read_csv(path) if path.suffix == ".csv" else _read_jsonl(path)
    except UnicodeDecodeError as error:
        raise DataError(f"{path} is not UTF-8 text ({error})") from None
    if not rows:
        raise DataError(f"{path} lists no images")
    return rows


def _read_csv(path: Path) -> list[Row]:
    with open(path, newline="", encoding="utf-8-sig") as file:  # -sig: a spreadsheet's byte-order mark
        reader = csv.DictReader(file)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path.name} lacks the column(s) {', '.join(missing)}; its header line reads "
                            f"{','.join(reader.fieldnames or [])!r}, expected at least 'file_name,text'")
        rows = []
        for record in reader:
            where = f"{path.name} line {reader.line_num}"
            if None in record:  # DictReader's key for fields beyond the header
                raise DataError(f"{where}: more fields than the header has; a caption with a comma must be "
                                f"in double quotes (\"a cat, sitting\")")
            rows.append(Row(record["file_name"] or "", record["text"] or "", where))
        return rows


def _read_jsonl(path: Path) -> list[Row]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path.name} line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise DataError(f"{where}: not a JSON object ({error.msg})") from None
        if not isinstance(record, dict) or any(c not in record for c in COLUMNS):
            raise DataError(f"{where}: expected an object with \"file_name\" and \"text\", got {line.strip()[:80]}")
        if not isinstance(record["file_name"], str) or not isinstance(record["text"], str):
            raise DataError(f"{where}: \"file_name\" and \"text\" must be strings")
        rows.append(Row(record["file_name"], record["text"], where))
    return rows


def _raise_all(problems: list[str], folder: Path) -> None:
    if problems:
        more = f"\n... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise DataError(f"{len(problems)} problem(s) in {folder}:\n" + "\n".join(problems[:MAX_LISTED]) + more)


def check_rows(rows: Sequence[Row], folder: str | os.PathLike, tokenizer=None) -> None:
    """Every problem a row can have before its image is opened, listed in one DataError.

    tokenizer: when given, every caption must encode with it (known words, fits the context).
    """
    folder, problems, first = Path(folder), [], {}
    for row in rows:
        name = row.file_name.strip()
        if not name:
            problems.append(f"{row.where}: file_name is empty")
            continue
        if name in first:
            problems.append(f"{row.where}: {name!r} is listed twice (first on {first[name]})")
        first.setdefault(name, row.where)
        relative = Path(os.path.normpath(name))  # by name, not resolved: a symlinked image is fine
        if relative.is_absolute() or relative.parts[0] == "..":
            problems.append(f"{row.where}: {name!r} is outside the folder")
        elif not (folder / relative).is_file():
            problems.append(f"{row.where}: image {name!r} not found in {folder}")
        if not row.text.strip():
            problems.append(f"{row.where}: the caption of {name!r} is empty")
        elif tokenizer is not None:
            try:
                tokenizer.encode(row.text)
            except ValueError as error:
                problems.append(f"{row.where}: the caption of {name!r}: {error}")
    _raise_all(problems, folder)


# ----------------------------------------------------------------------------- images
def load_image(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """An image as uint8 (S, S, 3): RGB, shorter side resized to S, center-cropped."""
    with Image.open(path) as image:
        image = ImageOps.fit(image.convert("RGB"), (image_size, image_size), Image.Resampling.BICUBIC)
        return np.asarray(image, dtype=np.uint8)


class ImageFolder(torch.utils.data.Dataset):
    """Images (N, 3, S, S) uint8 and their captions, loaded and checked once by `load_folder`.

    shuffle: draw batches in a new random order every epoch (False: in the metadata's order).
    """

    def __init__(self, images: torch.Tensor, captions: list[str], names: list[str], folder: Path,
                 shuffle: bool = True):
        self.images, self.captions, self.names, self.folder = images, captions, names, folder
        self.shuffle = shuffle
        self.image_size = images.shape[-1]
        self._epoch: tuple[tuple, list[int]] | None = None  # (sampler key, this process's indices)

    def __len__(self) -> int:
        return len(self.captions)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, str]:
        """(image (3, S, S) float in [0, 1], caption)."""
        return self.images[index].float() / 255, self.captions[index]

    def batch_indices(self, step: int, batch_size: int, seed: int = 0) -> torch.Tensor:
        """This process's share (B / processes,) of global batch `step`.

        An epoch is a DistributedSampler order (shuffled with seed + epoch) cut into N // B global
        batches (the rest is dropped), so global batch `step` holds the same images whatever
        the number of processes: a run resumes on more or fewer processes unchanged.
        """
        per_epoch = len(self) // batch_size
        if per_epoch == 0:
            raise DataError(f"{self.folder} holds {len(self)} images, fewer than one batch of {batch_size}; "
                            f"choose a smaller --batch-size")
        local = distributed.local_batch_size(batch_size)
        epoch, k = divmod(step, per_epoch)
        key = (epoch, seed, distributed.rank(), distributed.world_size())
        if self._epoch is None or self._epoch[0] != key:
            sampler = torch.utils.data.DistributedSampler(self, num_replicas=key[3], rank=key[2],
                                                          shuffle=self.shuffle, seed=seed)
            sampler.set_epoch(epoch)
            self._epoch = (key, list(sampler))
        return torch.tensor(self._epoch[1][k * local:(k + 1) * local])

    def batch(self, step: int, batch_size: int, seed: int = 0) -> tuple[torch.Tensor, list[str]]:
        """This process's share of global batch `step`: images (B, 3, S, S) in [0, 1] and captions."""
        index = self.batch_indices(step, batch_size, seed)
        return self.images[index].float() / 255, [self.captions[i] for i in index.tolist()]


def load_folder(folder: str | os.PathLike, image_size: int = 32, tokenizer=None, shuffle: bool = True) -> ImageFolder:
    """Check every row (`check_rows`), then load every image at image_size; one DataError lists the problems."""
    folder = Path(folder)
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"image_size must be an integer >= 8, got {image_size!r}")
    rows = read_metadata(folder)
    check_rows(rows, folder, tokenizer)
    images, problems = np.zeros((len(rows), image_size, image_size, 3), dtype=np.uint8), []
    for i, row in enumerate(rows):
        try:
            images[i] = load_image(folder / row.file_name.strip(), image_size)
        except (OSError, ValueError, Image.DecompressionBombError) as error:  # OSError: unreadable, truncated
            problems.append(f"{row.where}: cannot read image {row.file_name.strip()!r} ({error})")
    _raise_all(problems, folder)
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (N, 3, S, S) uint8
    return ImageFolder(pixels, [row.text.strip() for row in rows], [row.file_name.strip() for row in rows], folder,
                       shuffle)


# ----------------------------------------------------------------------------- export
def export_world(folder: str | os.PathLike, n: int, seed: int = 0, split: str = "train", partial: bool = True,
                 image_size: int = 32, chunk: int = 128, metadata: str = "metadata.csv",
                 force: bool = False) -> Path:
    """Write n scenes of the shapes world as PNGs plus metadata (file_name, text) to folder.

    Chunk k is `make_dataset(chunk, split, seed=seed * 1_000_003 + k, partial=partial)`: with
    chunk = the batch size, exactly the batches `train_clip` renders at steps 0, 1, ... (with
    config.seed = seed), so a folder run and a world run see the same images.
    Refuses a folder that is not empty unless force=True.
    """
    from minidalle.world import make_dataset

    folder = Path(folder)
    if metadata not in METADATA:
        raise ValueError(f"metadata must be one of {METADATA}, not {metadata!r}")
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())) and not force:
        raise FileExistsError(f"{folder} exists and is not empty; pass force=True (CLI: --force) to write "
                              f"into it anyway, or choose another folder")
    folder.mkdir(parents=True, exist_ok=True)
    for name in METADATA:  # a stale metadata file of the other kind would make the folder ambiguous
        (folder / name).unlink(missing_ok=True)
    width, rows = max(6, len(str(n - 1))), []
    for k in range(math.ceil(n / chunk)):
        batch = make_dataset(min(chunk, n - k * chunk), split, seed=seed * 1_000_003 + k, partial=partial,
                             image_size=image_size)
        pixels = (batch.images * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()  # (B, S, S, 3)
        for image, text in zip(pixels, batch.captions):
            name = f"{len(rows):0{width}d}.png"
            Image.fromarray(image).save(folder / name)
            rows.append((name, text))
    tmp = folder / f".{metadata}.tmp"  # metadata last, atomically: a half-written export has none
    with open(tmp, "w", newline="", encoding="utf-8") as file:
        if metadata.endswith(".csv"):
            csv.writer(file).writerows([COLUMNS, *rows])
        else:
            file.writelines(json.dumps(dict(zip(COLUMNS, row))) + "\n" for row in rows)
    os.replace(tmp, folder / metadata)
    return folder
