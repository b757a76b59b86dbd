"""Issue 17: how the shipped CLIP image embedding carries each colour: linear and MLP probes.

    python benchmarks/exp17/probe.py [--clip PATH] [--out JSON] [--threads 2]    # the shipped CLIP: writes probe.json

Trains, on 20,000 fresh train-split renders' CLIP image embeddings (standardized per dimension,
as the decoder sees them), a linear probe and a one-hidden-layer MLP probe (256 GELU units) for
the first colour (all renders) and for the stripe colour (striped renders only), then reads them
on 4,000 fresh renders of the train split ("seen" compositions) and 4,000 of the held-out split.
A decoder has to read the stripe colour out of the embedding as the MLP probe does: if a linear
probe cannot, the embedding holds it only in a non-linear form. A third probe, linear, reads
PCA-whitened embeddings (unit variance along every principal axis of the training embeddings): in the
same 3,000 steps a linear read learns more there when the attribute lives along axes of small
variance. The variance of every 8th principal axis is printed.
"""
import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from minidalle.clip import load_clip
from minidalle.world import COLORS, make_dataset


def embeddings(clip, n: int, split: str, seed: int):
    data = make_dataset(n, split, seed=seed)
    with torch.no_grad():
        z = torch.cat([clip.encode_image(data.images[i:i + 1024]) for i in range(0, n, 1024)])  # (n, E)
    return z, data.attributes


def labelled(z, attributes, name: str):
    """(embeddings, colour ids) of the renders that have the attribute (color2: striped ones)."""
    keep = [i for i, a in enumerate(attributes) if getattr(a, name) is not None]
    return z[keep], torch.tensor([COLORS.index(getattr(attributes[i], name)) for i in keep])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", default=None, help="a CLIP checkpoint (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None, help="write the figures to this JSON (default: probe.json for the "
                        "shipped CLIP, nothing for another)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    clip = load_clip(args.clip) if args.clip else load_clip()
    train, seen, heldout = (embeddings(clip, 20_000, "train", 1), embeddings(clip, 4_000, "train", 2),
                            embeddings(clip, 4_000, "heldout", 3))
    mean, std = train[0].mean(0), train[0].std(0)
    variances, axes = torch.linalg.eigh((train[0] - mean).T @ (train[0] - mean) / (len(train[0]) - 1))  # ascending
    print("variance along the principal axes (every 8th, smallest first):",
          ", ".join(f"{v:.1e}" for v in variances[::8].tolist()), f"... largest {variances[-1]:.1e}")
    white = axes / variances.clamp(min=1e-8).sqrt()  # (E, E): unit variance along every principal axis
    readers = {"linear": (0, lambda z: (z - mean) / std), "MLP 256": (256, lambda z: (z - mean) / std),
               "linear, whitened": (0, lambda z: (z - mean) @ white)}
    results = {}
    for name in ("color", "color2"):
        (z, y), tests = labelled(*train, name), {"seen": labelled(*seen, name), "held-out": labelled(*heldout, name)}
        for kind, (hidden, read) in readers.items():
            torch.manual_seed(0)
            probe = nn.Linear(z.shape[1], len(COLORS)) if not hidden else nn.Sequential(
                nn.Linear(z.shape[1], hidden), nn.GELU(), nn.Linear(hidden, len(COLORS)))
            optimizer = torch.optim.Adam(probe.parameters(), 3e-3)
            for _ in range(3000):
                i = torch.randint(len(z), (512,))
                loss = F.cross_entropy(probe(read(z[i])), y[i])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                accuracy = {group: (probe(read(zt)).argmax(1) == yt).float().mean().item()
                            for group, (zt, yt) in tests.items()}
            results[f"{name} {kind}"] = {g: round(a, 4) for g, a in accuracy.items()}
            print(f"{name:7s} {kind:17s} " + "  ".join(f"{g} {a:.3f} (n={len(tests[g][1])})"
                                                      for g, a in accuracy.items()))
    out = args.out or (None if args.clip else Path(__file__).resolve().parent / "probe.json")  # notebook 08 reads it
    if out:
        Path(out).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
