"""Issue 17: seconds per decoder training step (standardized U-Net, the training stream) by batch size.

    python benchmarks/exp17/step_time.py THREADS BATCH [BATCH ...]

Median of 20 steps after 5 warm-up steps; data, forward, backward and AdamW included.
"""
import dataclasses
import sys
import time

import torch

from minidalle.clip import load_clip
from minidalle.decoder import Decoder, DecoderConfig
from minidalle.train import DECODER_TRAIN, decoder_loss
from minidalle.unet import UNetConfig


def main():
    torch.set_num_threads(int(sys.argv[1]))
    clip = load_clip()
    for batch in map(int, sys.argv[2:]):
        loss_fn = decoder_loss(clip, dataclasses.replace(DECODER_TRAIN, batch_size=batch))
        model = Decoder(DecoderConfig(unet=UNetConfig(embed_dim=clip.config.embed_dim, standardize=True)))
        optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
        seconds = []
        for step in range(25):
            start = time.perf_counter()
            loss = loss_fn(model, step)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seconds.append(time.perf_counter() - start)
        seconds = sorted(seconds[5:])
        print(f"threads {sys.argv[1]}, batch {batch}: {seconds[len(seconds) // 2]:.3f} s/step", flush=True)


if __name__ == "__main__":
    main()
