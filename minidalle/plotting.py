"""Small figure helpers shared by notebooks and the CLI: image grids with captions."""
from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import torch


def show_grid(images: torch.Tensor, captions: Sequence[str] | None = None, ncols: int = 8, size: float = 1.6,
              title: str | None = None, wrap: int = 18):
    """Draw images (N, 3, S, S) in [0, 1] in a grid with optional captions; returns the figure."""
    import matplotlib.pyplot as plt

    n = len(images)
    ncols = min(ncols, n) or 1
    nrows = (n + ncols - 1) // ncols
    extra = 0.45 if captions is not None else 0.0
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, (size + extra) * nrows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i].detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy(), interpolation="nearest")
            if captions is not None:
                ax.set_title("\n".join(textwrap.wrap(captions[i], wrap)), fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_grid(images: torch.Tensor, path, captions: Sequence[str] | None = None, ncols: int = 8) -> Path:
    """Write images as a PNG grid (a single image for N = 1, upscaled so it can be seen)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {path.name}")
    fig = show_grid(images, captions, ncols=ncols, size=2.0 if len(images) == 1 else 1.6)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
