"""Issue 16's probe: where is the star lost, and which decoder stage learns it without forgetting?

    python benchmarks/exp16/run.py LABEL [recipe_field=value ...] [--decoder-only]
    e.g. python benchmarks/exp16/run.py r3lr6 decoder_steps=400 decoder_batch=8 decoder_replay=3 decoder_lr=0.006

Refines the shipped pipeline with the recipe (Recipe's defaults plus the overrides; LABEL "unrefined"
trains nothing), then measures (1) the decoder alone: 64 real renders of the new concept -> CLIP image
embedding -> the refined decoder (10 DDIM steps) -> the extended judge: is the new shape drawn? and
64 renders of the old world (train split): is every attribute still drawn? (2) unless --decoder-only,
the whole pipeline on 64 new-concept and 64 old prompts (10 DDIM steps; refine_eval.evaluate_refinement).
Writes LABEL.json next to this file, with the decoder stage's settings spelled out ("decoder"). The
runs of 2026-11-30 are there (one thread each; base and dec400b16 ran before the LoRA A matrices were
seeded by the recipe and before the old-render count was added); notebook 10 reads them. full3e4 ran when
decoder_lr also set full fine-tuning's rate; it now applies to LoRA only (rerun it with rank=0 full_lr=0.0003).
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
from minidalle.world import make_dataset  # noqa: E402

torch.set_num_threads(1)

label = sys.argv[1]
decoder_only = "--decoder-only" in sys.argv  # skip the pipeline's evaluation (the decoder-alone figures only)
kw = {}
for a in [a for a in sys.argv[2:] if a != "--decoder-only"]:
    k, v = a.split("=")
    default = getattr(Recipe(), k)
    kw[k] = v == "1" if isinstance(default, bool) else float(v) if default is None else type(default)(v)
recipe = Recipe(**kw)
decoder_settings = None if label == "unrefined" else {  # what the decoder stage ran with (defaults change)
    "decoder_steps": recipe.decoder_steps, "decoder_batch": recipe.decoder_batch, "decoder_replay": recipe.decoder_replay,
    "decoder_lr": recipe.stage_lr("decoder"), "rank": recipe.rank,
    "alpha": recipe.alpha}
judge = load_judge(extended=True)
pipe = UnCLIP.from_pretrained()
info = refine(pipe, recipe, progress=False) if label != "unrefined" else {"cpu_seconds": {}}
# decoder alone: real renders of the new concept -> CLIP image embedding -> decoder -> judge
world = recipe.world
real = world.concept_dataset(64, seed=77, partial=False)
with torch.no_grad():
    z = pipe.clip.encode_image(real.images)
    imgs = pipe.decoder.sample(z, seed=0, steps=10)
    got = judge.predict(imgs)
dec_shape = sum(g.shape == a.shape for g, a in zip(got, real.attributes) if a.shape in world.new_shapes)
dec_n = sum(a.shape in world.new_shapes for a in real.attributes)
# decoder alone on old renders (64, train split): is every attribute still drawn? (the decoder's forgetting)
old = make_dataset(64, "train", seed=78)
with torch.no_grad():
    got_old = judge.predict(pipe.decoder.sample(pipe.clip.encode_image(old.images), seed=0, steps=10))
dec_old = sum(g == a for g, a in zip(got_old, old.attributes))
if label == "unrefined" or decoder_only:
    out = {"label": label, "decoder": decoder_settings, "cpu": info["cpu_seconds"], "decoder_only_star": [dec_shape, dec_n],
           "decoder_only_old_all": [dec_old, 64]}
    print(json.dumps(out))
    with open(Path(__file__).with_name(f"{label}.json"), "w") as f:
        json.dump(out, f)
    sys.exit()
r = evaluate_refinement(pipe, judge, world, n_new=64, n_old=64, steps=10)
out = {"label": label, "decoder": decoder_settings, "cpu": info["cpu_seconds"], "decoder_only_star": [dec_shape, dec_n],
       "decoder_only_old_all": [dec_old, 64],
       **{k: r[k] for k in r if k.startswith(("new_concept", "new_star", "new_pink", "new_all", "old_seen_all", "old_heldout_all"))}}
print(json.dumps(out))
with open(Path(__file__).with_name(f"{label}.json"), "w") as f:
    json.dump(out, f)
