"""Image folders: every kind of bad data stops with a message naming the file and the row;
export -> folder -> train is the same as training on the generated world; the CLI commands."""
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from minidalle.__main__ import main
from minidalle.checkpoints import CheckpointError, config_from_dict, paths
from minidalle.clip import CLIPConfig, load_clip, zero_shot_classify
from minidalle.data import DataError, export_world, load_folder
from minidalle.pipeline import UnCLIP
from minidalle.sources import clip_config_for
from minidalle.tokenizer import WordTokenizer
from minidalle.train import TrainConfig, train_clip
from minidalle.world import SHAPES, make_dataset


def write_folder(folder, rows, images=("a.png", "b.png", "c.png"), metadata="metadata.csv"):
    """A folder with small RGB PNGs and a metadata file of (file_name, text) rows."""
    folder.mkdir(exist_ok=True)
    for k, name in enumerate(images):
        Image.fromarray(np.full((12, 20, 3), (40 * k) % 256, dtype=np.uint8)).save(folder / name)
    if metadata.endswith(".csv"):
        with open(folder / metadata, "w", newline="") as file:
            csv.writer(file).writerows([("file_name", "text"), *rows])
    else:
        (folder / metadata).write_text("".join(json.dumps({"file_name": n, "text": t}) + "\n" for n, t in rows))
    return folder


GOOD = [("a.png", "a red circle"), ("b.png", "a blue square"), ("c.png", "a green cross")]


# ----------------------------------------------------------------------------- good data
@pytest.mark.parametrize("metadata", ["metadata.csv", "metadata.jsonl"])
def test_a_good_folder_loads_resized_and_cropped(tmp_path, metadata):
    data = load_folder(write_folder(tmp_path / "f", GOOD, metadata=metadata), image_size=8)
    assert data.images.shape == (3, 3, 8, 8) and data.images.dtype == torch.uint8
    assert data.captions == [text for _, text in GOOD] and data.names == ["a.png", "b.png", "c.png"]
    assert data.images[1].unique().tolist() == [40]  # a flat 12x20 image stays flat after resize + crop
    image, text = data[2]
    assert image.shape == (3, 8, 8) and image.max() == pytest.approx(80 / 255) and text == "a green cross"


def test_center_crop_keeps_the_middle(tmp_path):
    pixels = np.zeros((10, 30, 3), dtype=np.uint8)
    pixels[:, 10:20] = 255  # a white middle third, black sides: a square crop keeps only the middle
    (tmp_path / "f").mkdir()
    Image.fromarray(pixels).save(tmp_path / "f" / "wide.png")
    (tmp_path / "f" / "metadata.csv").write_text("file_name,text\nwide.png,a wide image\n")
    assert load_folder(tmp_path / "f", image_size=10).images.min() == 255


# ----------------------------------------------------------------------------- bad data
def test_missing_file_names_line_and_image(tmp_path):
    folder = write_folder(tmp_path / "f", GOOD + [("gone.png", "a white circle")])
    with pytest.raises(DataError, match=r"metadata\.csv line 5: image 'gone\.png' not found in"):
        load_folder(folder)


def test_unreadable_and_truncated_images_name_line_and_image(tmp_path):
    folder = write_folder(tmp_path / "f", GOOD + [("junk.png", "a red cross"), ("half.png", "a blue cross")])
    (folder / "junk.png").write_bytes(b"this is not an image")
    whole = (folder / "a.png").read_bytes()
    (folder / "half.png").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError) as error:
        load_folder(folder)
    message = str(error.value)
    assert "2 problem(s)" in message
    assert "metadata.csv line 5: cannot read image 'junk.png'" in message
    assert "metadata.csv line 6: cannot read image 'half.png'" in message


def test_empty_caption_names_line_and_image(tmp_path):
    folder = write_folder(tmp_path / "f", [("a.png", "a red circle"), ("b.png", "  "), ("c.png", "a cross")])
    with pytest.raises(DataError, match=r"metadata\.csv line 3: the caption of 'b\.png' is empty"):
        load_folder(folder)


def test_duplicate_name_names_both_lines(tmp_path):
    folder = write_folder(tmp_path / "f", GOOD + [("b.png", "a small blue square")])
    with pytest.raises(DataError, match=r"metadata\.csv line 5: 'b\.png' is listed twice \(first on metadata\.csv "
                                        r"line 3\)"):
        load_folder(folder)


def test_caption_the_tokenizer_cannot_read_names_line_and_word(tmp_path):
    folder = write_folder(tmp_path / "f", GOOD[:2] + [("c.png", "a pink cross")], metadata="metadata.jsonl")
    with pytest.raises(DataError, match=r"metadata\.jsonl line 3: the caption of 'c\.png': unknown word 'pink'"):
        load_folder(folder, tokenizer=WordTokenizer())


def test_a_comma_outside_quotes_is_caught(tmp_path):
    folder = write_folder(tmp_path / "f", GOOD)
    (folder / "metadata.csv").write_text('file_name,text\na.png,"a cat, sitting"\nb.png,a dog, sitting\n')
    with pytest.raises(DataError, match=r"metadata\.csv line 3: more fields than the header has; a caption with "
                                        r"a comma must be in double quotes"):
        load_folder(folder)


def test_metadata_problems(tmp_path):
    with pytest.raises(DataError, match="has no metadata.csv or metadata.jsonl"):
        load_folder(write_folder(tmp_path / "none", [], metadata="other.csv"))
    folder = write_folder(tmp_path / "cols", [])
    (folder / "metadata.csv").write_text("file,caption\na.png,a red circle\n")
    with pytest.raises(DataError, match="lacks the column.s. file_name, text"):
        load_folder(folder)
    folder = write_folder(tmp_path / "json", [], metadata="metadata.jsonl")
    (folder / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "a red circle"}\n{"file_name": "b.png"\n')
    with pytest.raises(DataError, match=r"metadata\.jsonl line 2: not a JSON object"):
        load_folder(folder)
    folder = write_folder(tmp_path / "out", [("../a.png", "a red circle"), ("/etc/passwd", "a red circle")])
    with pytest.raises(DataError, match=r"line 2: '\.\./a\.png' is outside the folder\n.*line 3: '/etc/passwd' is "
                                        r"outside the folder"):
        load_folder(folder)
    folder = write_folder(tmp_path / "link", [("a.png", "a red circle"), ("linked.png", "a red square")])
    (folder / "linked.png").symlink_to(tmp_path / "out" / "a.png")  # a link out of the folder is fine
    assert len(load_folder(folder)) == 2
    write_folder(tmp_path / "both", GOOD)
    write_folder(tmp_path / "both", GOOD, metadata="metadata.jsonl")
    with pytest.raises(DataError, match="both metadata.csv and metadata.jsonl"):
        load_folder(tmp_path / "both")


def test_too_few_images_for_a_batch(tmp_path):
    data = load_folder(write_folder(tmp_path / "f", GOOD), image_size=8)
    with pytest.raises(DataError, match="holds 3 images, fewer than one batch of 4"):
        data.batch(0, 4)


def test_cli_reports_bad_data_without_a_traceback(tmp_path, capsys):
    folder = write_folder(tmp_path / "f", GOOD + [("gone.png", "a white circle")])
    code = main(["train", "clip", "--data", str(folder), "--preset", "tiny", "--checkpoints", str(tmp_path / "ck")])
    err = capsys.readouterr().err
    assert code == 2 and "metadata.csv line 5: image 'gone.png' not found" in err and "Traceback" not in err
    assert not (tmp_path / "ck").exists()


def test_training_on_a_folder_never_targets_the_shipped_checkpoints(tmp_path, monkeypatch, capsys):
    import minidalle.__main__ as cli

    monkeypatch.setattr(cli, "DATA_DIR", tmp_path / "data")
    export_world(tmp_path / "shapes", 16)
    assert main(["train", "clip", "--data", str(tmp_path / "shapes"), "--preset", "tiny", "--steps", "1"]) == 0
    assert f"wrote {tmp_path / 'data' / 'runs' / 'shapes' / 'clip'}.safetensors" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the round trip
def test_export_holds_the_worlds_batches(tmp_path):
    """Chunk k of an export is the batch train_clip renders at step k (PNG: within half a level)."""
    export_world(tmp_path / "w", 40, seed=5, chunk=16, metadata="metadata.jsonl")
    data = load_folder(tmp_path / "w", shuffle=False)
    for k, size in enumerate((16, 16, 8)):
        batch = make_dataset(size, "train", seed=5 * 1_000_003 + k, partial=True)
        images, captions = data.images[16 * k:16 * k + size].float() / 255, data.captions[16 * k:16 * k + size]
        torch.testing.assert_close(images, batch.images, atol=0.5 / 255 + 1e-6, rtol=0)
        assert captions == batch.captions


def test_export_refuses_a_folder_that_is_not_empty(tmp_path, capsys):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "notes.txt").write_text("mine")
    assert main(["export-world", str(tmp_path / "w"), "--n", "4"]) == 2
    assert "is not empty; pass force=True (CLI: --force)" in capsys.readouterr().err
    assert main(["export-world", str(tmp_path / "w"), "--n", "4", "--force"]) == 0
    assert (tmp_path / "w" / "notes.txt").read_text() == "mine" and len(load_folder(tmp_path / "w")) == 4


def test_training_from_the_folder_is_training_on_the_world(tmp_path):
    """export -> folder (in file order) -> train_clip gives the world run's losses, step for step."""
    config = TrainConfig(steps=6, batch_size=32, lr=2e-3, warmup=2, eval_every=100, save_every=100, seed=3)
    export_world(tmp_path / "w", 6 * 32, seed=3, chunk=32)
    data = load_folder(tmp_path / "w", shuffle=False)
    _, world = train_clip(CLIPConfig.tiny(), config, progress=False, eval_size=0)
    _, folder = train_clip(CLIPConfig.tiny(), config, progress=False, eval_size=0, data=data)
    world_loss, folder_loss = np.array(world.history)[:, 1], np.array(folder.history)[:, 1]
    assert world_loss[-1] < world_loss[0] - 0.1  # it learns
    np.testing.assert_allclose(folder_loss, world_loss, atol=3e-3)  # only PNG rounding differs
    shuffled = load_folder(tmp_path / "w", shuffle=True)  # other batches: other losses (the check can fail)
    _, other = train_clip(CLIPConfig.tiny(), config, progress=False, eval_size=0, data=shuffled)
    assert np.abs(np.array(other.history)[:, 1] - world_loss).max() > 0.02


def test_the_shipped_clip_sees_exported_images_as_renders(tmp_path):
    """128 held-out scenes, from the folder and as renders: the same CLIP embeddings and zero-shot shapes."""
    export_world(tmp_path / "w", 128, seed=9, split="heldout", chunk=128, partial=False)
    data, renders = load_folder(tmp_path / "w"), make_dataset(128, "heldout", seed=9 * 1_000_003)
    clip = load_clip()
    with torch.no_grad():
        cosine = (clip.encode_image(data.images.float() / 255) * clip.encode_image(renders.images)).sum(-1)
    assert cosine.min() > 0.99, cosine.min()
    prompts = {shape: f"a {shape}" for shape in SHAPES}
    from_folder = zero_shot_classify(clip, data.images.float() / 255, prompts)
    assert from_folder == zero_shot_classify(clip, renders.images, prompts)
    assert sum(p == a.shape for p, a in zip(from_folder, renders.attributes)) >= 120  # and they are right


def test_clip_config_for_captions(tmp_path):
    captions = ["A cat, sitting.", "a dog sitting on a very long mat with many many words in it today"]
    config = clip_config_for(captions, CLIPConfig.tiny())
    assert config.vocabulary[0] == "a" and {"cat", ",", ".", "dog"} <= set(config.vocabulary)
    assert config.text.vocab_size == 3 + len(config.vocabulary) and config.text.context_length == 17  # 15 words
    bpe = clip_config_for(captions, CLIPConfig.tiny(), "bpe")
    assert bpe.text.vocab_size == 49408 and bpe.vocabulary == () and not bpe.world_tokenizer
    with pytest.raises(ValueError, match="text.vocab_size is 28, but the word tokenizer has"):
        CLIPConfig(vocabulary=("a", "cat"))


# ----------------------------------------------------------------------------- your own captions
def test_the_shipped_clip_keeps_the_worlds_tokenizer():
    meta = json.loads(paths("clip")[1].read_text())
    assert "tokenizer" not in meta["config"] and "vocabulary" not in meta["config"]  # saved before these fields
    clip = load_clip()
    assert clip.config.world_tokenizer and clip.tokenizer.vocab == WordTokenizer().vocab
    broken = dict(meta["config"])
    del broken["embed_dim"]  # only the fields added later may be missing
    with pytest.raises(CheckpointError, match=r"lacks fields \['embed_dim'\]"):
        config_from_dict(CLIPConfig, broken)


@pytest.mark.parametrize("tokenizer", ["word", "bpe"])
def test_free_text_folder_end_to_end(tmp_path, tokenizer):
    """Captions outside the shapes world: train all three stages briefly, then generate from a new prompt."""
    words = ["cat", "dog", "bird", "fish"]
    rows = [(f"{k}.png", f"A photo of a {words[k % 4]}, number {k}.") for k in range(16)]
    write_folder(tmp_path / "f", rows, images=[name for name, _ in rows])
    out = tmp_path / "ck"
    assert main(["train", "all", "--data", str(tmp_path / "f"), "--preset", "tiny", "--steps", "2",
                 "--batch-size", "8", "--tokenizer", tokenizer, "--checkpoints", str(out)]) == 0
    pipe = UnCLIP.from_pretrained(out)
    assert pipe.clip.config.tokenizer == tokenizer and not pipe.clip.config.world_tokenizer
    assert pipe.generate("a photo of a dog.", steps=2).shape == (1, 3, 32, 32)
    if tokenizer == "word":  # its vocabulary is the captions' words: say which word is new
        assert "cat" in pipe.clip.config.vocabulary
        with pytest.raises(ValueError, match="unknown word 'horse'; the tokenizer knows: a, "):
            pipe.generate("a photo of a horse", steps=2)
    else:
        assert pipe.generate("a photo of a horse", steps=2).shape == (1, 3, 32, 32)  # BPE reads any text
