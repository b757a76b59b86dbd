"""Notebook 09's race for benchmarks/run.py: the shipped GAN against the shipped diffusion decoder.

Both decode the same prior embeddings of the same fresh prompts and one judge reads them:
fidelity (95 % Wilson), variety for partial prompts (95 % bootstrap), the spread of draws for one
embedding, the judge-feature Fréchet distance (bootstrap, with its real-vs-real floor), images per
second (median and range), and both training budgets. Stability needs training runs and lives in
the notebook.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

PARTIAL = ("a striped triangle", "a small cross")
FIELDS = ("shape", "color", "striped", "color2", "size", "position")


def _bootstrap(readings, statistic, resamples: int = 500):
    from minidalle.evaluate import bootstrap_interval

    return bootstrap_interval(np.arange(len(readings)), lambda i: statistic([readings[int(k)] for k in i]),
                              resamples=resamples)


def _pair(name: str, values: dict) -> str:
    from minidalle.evaluate import format_interval

    return "; ".join(f"{model} {format_interval(*values[model])}" for model in values) + f" ({name})"


@torch.no_grad()
def bench(folder, quick: bool, figure, seed: int) -> list[dict]:
    """Rows of figures (see benchmarks/run.py's figure) comparing the GAN with the decoder."""
    from minidalle import checkpoints
    from minidalle.evaluate import (SCORED, bootstrap_interval, evaluation_prompts, frechet_distance, load_judge,
                                    score_prompts, variety)
    from minidalle.gan import load_gan
    from minidalle.pipeline import UnCLIP
    from minidalle.world import parse_prompt, render, sample_scenes

    pipe, gan, judge = UnCLIP.from_pretrained(folder), load_gan(folder / "gan"), load_judge(folder / "judge")
    n, k = (64, 32) if quick else (256, 64)
    prompts, scenes, real = evaluation_prompts(n, seed=seed)
    embeddings = pipe.prior_embedding(prompts, seed=0)
    images = {"decoder": pipe.decode(embeddings, seed=0), "GAN": gan.sample(embeddings, seed=0)}
    scores = {name: score_prompts(judge.predict(x), prompts, intervals=True) for name, x in images.items()}
    rows = []
    for group in ("seen", "heldout"):
        for attribute in SCORED + ("all",):
            key = f"{group}_{attribute}"
            label = "stripe colour" if attribute == "color2" else attribute
            rows.append(figure(f"GAN {group} {label}", scores["GAN"][key], None, _pair(
                f"{scores['GAN'][key + '_k']} prompts, same prior embeddings, 95 % Wilson",
                {m: (s[key], s[key + "_ci"]) for m, s in scores.items()})))

    pool = sample_scenes(20_000, "train", np.random.default_rng(seed))
    for p, prompt in enumerate(PARTIAL):
        asked = parse_prompt(prompt)
        fits = [s for s in pool if all(getattr(asked, f) in (None, getattr(s, f)) for f in FIELDS)][:k]
        drawn = pipe.prior_embedding([prompt] * k, seed=10 + p)
        readings = {"data": judge.predict(render(fits, seed=seed + p)),
                    "decoder": judge.predict(pipe.decode(drawn, seed=10 + p)),
                    "GAN": judge.predict(gan.sample(drawn, seed=10 + p))}
        how = f"{k} samples of '{prompt}' (prior draws) vs {k} renders of fitting training scenes"
        # a count, without an interval: a bootstrap resample repeats samples, so it undercounts distinct readings
        distinct = "; ".join(f"{m} {len(set(r))}" for m, r in readings.items())
        rows.append(figure(f"GAN distinct readings, '{prompt}'", len(set(readings["GAN"])), None,
                           f"{distinct} ({how}; whole scenes as the judge reads them; a count, no interval)"))
        for field in (f for f in FIELDS if getattr(asked, f) is None):  # what the prompt leaves open
            entropy = {m: (variety(r, field), _bootstrap(r, lambda rs, f=field: variety(rs, f)))
                       for m, r in readings.items()}
            label = "stripe colour" if field == "color2" else field
            rows.append(figure(f"GAN entropy of {label} (bits), '{prompt}'", entropy["GAN"][0], None,
                               _pair(f"{how}; 95 % bootstrap", entropy)))

    m, r = (4, 4) if quick else (8, 8)
    same = embeddings[:m].repeat_interleave(r, dim=0)  # (m * r, E)
    sets = {"data": render([s for s in scenes[:m] for _ in range(r)], seed=seed + 7),
            "decoder": pipe.decode(same, seed=1), "GAN": gan.sample(same, seed=1)}
    spread = {}
    for name, x in sets.items():
        values = F.avg_pool2d(x, 2).view(m, r, -1).std(dim=1).mean(dim=1).numpy()  # (m,)
        spread[name] = (float(values.mean()), bootstrap_interval(values, resamples=1000))
    rows.append(figure("GAN spread for one embedding", spread["GAN"][0], None, _pair(
        f"pixel std over {r} draws of one embedding (2x2 averaged), mean of {m}, 95 % bootstrap", spread)))

    real_features = judge.embed(real)
    features = {name: judge.embed(x) for name, x in images.items()} | {"floor": judge.embed(render(scenes, seed=99))}
    distance = {name: (frechet_distance(f, real_features), bootstrap_interval(
        np.arange(n), lambda i, f=f: frechet_distance(f[i.astype(int)], real_features[i.astype(int)]), resamples=200))
        for name, f in features.items()}
    rows.append(figure("GAN judge-feature Fréchet distance", distance["GAN"][0], None, _pair(
        f"to renders of the same {n} prompts; floor = a second render; 95 % bootstrap over prompts", distance)))

    batch, repeats = (16, 2) if quick else (32, 3)
    seconds = {"decoder": [], "GAN": []}
    for rep in range(repeats):  # in turn, so that both see the same load
        for name, draw in (("decoder", lambda: pipe.decode(embeddings[:batch], seed=rep)),
                           ("GAN", lambda: gan.sample(embeddings[:batch], seed=rep))):
            start = time.perf_counter()
            draw()
            seconds[name].append(time.perf_counter() - start)
    speed = {name: (batch / float(np.median(s)), (batch / max(s), batch / min(s))) for name, s in seconds.items()}
    rows.append(figure("GAN / decoder images per second", speed["GAN"][0] / speed["decoder"][0], None, _pair(
        f"batches of {batch}, median and range of {repeats}, {torch.get_num_threads()} threads; decoder "
        f"{pipe.decoder.config.steps} DDIM steps, guidance {pipe.decoder.config.guidance}", speed)))

    meta = checkpoints.read_meta(folder / "gan", "gan")["metrics"]
    budget = meta.get("budget") or {}
    rows.append(figure("GAN training time (s)", meta.get("train_seconds"), None,
                       f"gan.json: {(meta.get('train_config') or {}).get('steps')} steps on {meta.get('torch_threads')} threads; "
                       f"budget {budget.get('steps')} steps = the decoder's {budget.get('decoder_steps')} at "
                       f"{budget.get('decoder_seconds_per_step')} vs {budget.get('gan_seconds_per_step')} s per step "
                       "(timed back to back)", "s"))
    rows.append(figure("decoder training time (s)", pipe.decoder.metrics.get("train_seconds"), None,
                       "decoder.json train_seconds", "s"))
    return rows
