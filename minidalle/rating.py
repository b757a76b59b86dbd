"""Rating images by hand: a small ipywidgets rater that saves 1-5 ratings to CSV, and
reading them back to compare with the rubric (`minidalle.evaluate.rating_agreement`).
"""
from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch



# ----------------------------------------------------------------------------- rating by hand
RATING_FIELDS = ("index", "prompt", "rating")


def read_ratings(path, prompts: Sequence[str] | None = None) -> list[int]:
    """Ratings saved by Rater, ordered by image index (the last rating of an image wins).

    With prompts, checks that the file rates exactly these prompts, all of them.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no ratings at {path}")
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != RATING_FIELDS:
            raise ValueError(f"{path} is not a ratings file: expected columns {RATING_FIELDS}, got {reader.fieldnames}")
        rows = {int(r["index"]): (r["prompt"], int(r["rating"])) for r in reader}
    if any(not 1 <= rating <= 5 for _, rating in rows.values()):
        raise ValueError(f"{path} holds ratings outside 1-5")
    if prompts is not None:
        expected = dict(enumerate(prompts))
        if {i: p for i, (p, _) in rows.items()} != expected:
            raise ValueError(f"{path} rates {len(rows)} images that do not match the {len(expected)} prompts given")
    return [rows[i][1] for i in sorted(rows)]


def _png(image: torch.Tensor, scale: int = 6) -> bytes:
    from PIL import Image

    pixels = (image.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels.repeat(scale, 0).repeat(scale, 1)).save(buffer, format="PNG")  # nearest upscale
    return buffer.getvalue()


class Rater:
    """Rate images 1-5 by hand in a notebook: one image at a time, five buttons, one CSV row per click.

    An existing file is appended to (rating resumes at the first unrated image), never
    overwritten; if_exists="refuse" raises FileExistsError instead. `display(rater)` shows it.
    """

    def __init__(self, images: torch.Tensor, prompts: Sequence[str], path, if_exists: str = "append"):
        import ipywidgets as widgets

        if if_exists not in ("append", "refuse"):
            raise ValueError(f"if_exists must be 'append' or 'refuse', not {if_exists!r}")
        if isinstance(prompts, str) or len(images) != len(prompts) or len(prompts) == 0:
            raise ValueError("need one prompt per image, and at least one image")
        self.images, self.prompts, self.path = images, list(prompts), Path(path)
        self.ratings: dict[int, int] = {}
        if self.path.exists():
            if if_exists == "refuse":
                raise FileExistsError(f"{self.path} exists; choose another path or if_exists='append'")
            with self.path.open(newline="") as f:
                reader = csv.DictReader(f)
                if tuple(reader.fieldnames or ()) != RATING_FIELDS:
                    raise ValueError(f"{self.path} exists and is not a ratings file; choose another path")
                self.ratings = {int(r["index"]): int(r["rating"]) for r in reader}
        self.index = next((i for i in range(len(self.prompts)) if i not in self.ratings), len(self.prompts))
        self.picture = widgets.Image(format="png", width=192, height=192)
        self.label = widgets.Label()
        self.buttons = [widgets.Button(description=str(r), layout=widgets.Layout(width="48px")) for r in range(1, 6)]
        for rating, button in enumerate(self.buttons, start=1):
            button.on_click(lambda _button, rating=rating: self.rate(rating))
        self.widget = widgets.VBox([self.label, self.picture, widgets.HBox(self.buttons)])
        self._show()

    def __repr__(self) -> str:
        where = f"{len(self.ratings)} of {len(self.prompts)} rated, into {self.path.name}"
        if self.done:
            return f"Rater: done, {where}"
        return (f"Rater: image {self.index + 1} of {len(self.prompts)}, {self.prompts[self.index]!r}; {where}. "
                "The image and its rating buttons show in JupyterLab.")

    def _repr_mimebundle_(self, **kwargs) -> dict:
        """display(rater): the widget in JupyterLab; elsewhere (GitHub, a terminal) one line of text, not PNG bytes."""
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/plain"] = repr(self)
        return bundle

    @property
    def done(self) -> bool:
        return self.index >= len(self.prompts)

    def _show(self) -> None:
        if self.done:
            self.label.value = f"done: {len(self.ratings)} ratings in {self.path.name}"
            for button in self.buttons:
                button.disabled = True
            return
        self.picture.value = _png(self.images[self.index])
        self.label.value = f"{self.index + 1}/{len(self.prompts)}: {self.prompts[self.index]}"

    def rate(self, rating: int) -> None:
        """Record a rating for the current image (append one CSV row), then show the next unrated one."""
        if self.done:
            raise RuntimeError("every image is rated already")
        if rating not in range(1, 6):
            raise ValueError(f"a rating is an integer from 1 to 5, got {rating!r}")
        new = not self.path.exists() or os.path.getsize(self.path) == 0
        with self.path.open("a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(RATING_FIELDS)
            writer.writerow([self.index, self.prompts[self.index], rating])
        self.ratings[self.index] = rating
        self.index = next((i for i in range(self.index + 1, len(self.prompts)) if i not in self.ratings),
                          len(self.prompts))
        self._show()
