"""Issue 16's probe: is the decoder what keeps the star from being drawn, and does a longer decoder stage help?

    python benchmarks/exp16/run.py LABEL [recipe_field=value ...]    e.g. dec400b16 decoder_steps=400 decoder_batch=16

Refines the shipped pipeline with the recipe (Recipe's defaults plus the overrides), then measures
(1) the decoder alone: 64 real renders of the new concept -> CLIP image embedding -> the refined
decoder (10 DDIM steps) -> the extended judge: is the new shape drawn? and (2) the whole pipeline on
64 new-concept and 64 old prompts (10 DDIM steps; refine_eval.evaluate_refinement). Writes LABEL.json
next to this file. base.json and dec400b16.json are the two runs of 2026-11-30 (one thread each; base
ran before the LoRA A matrices were seeded by the recipe).
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run from a checkout
from minidalle.judge import load_judge  # noqa: E402
from minidalle.pipeline import UnCLIP  # noqa: E402
from minidalle.refine import Recipe, refine  # noqa: E402
from minidalle.refine_eval import evaluate_refinement  # noqa: E402

torch.set_num_threads(1)

label = sys.argv[1]
kw = {}
for a in sys.argv[2:]:
    k, v = a.split("=")
    kw[k] = type(getattr(Recipe(), k))(v) if not isinstance(getattr(Recipe(), k), bool) else v == "1"
recipe = Recipe(**kw)
judge = load_judge(extended=True)
pipe = UnCLIP.from_pretrained()
info = refine(pipe, recipe, progress=False)
# decoder alone: real renders of the new concept -> CLIP image embedding -> decoder -> judge
world = recipe.world
real = world.concept_dataset(64, seed=77, partial=False)
with torch.no_grad():
    z = pipe.clip.encode_image(real.images)
    imgs = pipe.decoder.sample(z, seed=0, steps=10)
    got = judge.predict(imgs)
dec_shape = sum(g.shape == a.shape for g, a in zip(got, real.attributes) if a.shape in world.new_shapes)
dec_n = sum(a.shape in world.new_shapes for a in real.attributes)
r = evaluate_refinement(pipe, judge, world, n_new=64, n_old=64, steps=10)
out = {"label": label, "recipe": kw, "cpu": info["cpu_seconds"], "decoder_only_star": [dec_shape, dec_n],
       **{k: r[k] for k in r if k.startswith(("new_concept", "new_star", "new_pink", "new_all", "old_seen_all", "old_heldout_all"))}}
print(json.dumps(out))
with open(Path(__file__).with_name(f"{label}.json"), "w") as f:
    json.dump(out, f)
