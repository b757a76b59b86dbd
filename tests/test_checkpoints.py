"""Checkpoints: exact round trips, clear errors on mismatched/corrupt/missing files, strict
configs, atomic writes, no silent overwrites, and a resumed run equal to a straight one."""
import json

import pytest
import torch
from safetensors.torch import load_file

from minidalle import CHECKPOINT_DIR, checkpoints
from minidalle.checkpoints import CheckpointError, config_from_dict, ensure_writable, paths
from minidalle.clip import CLIP, CLIPConfig, load_clip, save_clip
from minidalle.train import TrainConfig, Trainer, train_clip
from minidalle.transformer import TextConfig
from minidalle.world import make_dataset


@pytest.fixture
def saved(tmp_path):
    """A tiny CLIP saved at tmp_path / 'clip': (model, path)."""
    torch.manual_seed(0)
    model = CLIP(CLIPConfig.tiny()).eval()
    save_clip(model, tmp_path / "clip", metrics={"heldout_retrieval_top1": 0.5}, step=3)
    return model, tmp_path / "clip"


def edit_json(path, change) -> None:
    json_path = paths(path)[1]
    meta = json.loads(json_path.read_text())
    change(meta)
    json_path.write_text(json.dumps(meta))


# ----------------------------------------------------------------------------- round trip
def test_save_then_load_gives_identical_outputs(saved):
    model, path = saved
    loaded = load_clip(path)
    assert loaded.config == model.config and not loaded.training
    assert loaded.metrics == {"heldout_retrieval_top1": 0.5}
    data = make_dataset(4, seed=1)
    with torch.no_grad():
        assert torch.equal(loaded.encode_image(data.images), model.encode_image(data.images))
        assert torch.equal(loaded.encode_text(data.captions), model.encode_text(data.captions))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_paths_accept_names_paths_and_suffixes(tmp_path):
    assert paths("clip") == (CHECKPOINT_DIR / "clip.safetensors", CHECKPOINT_DIR / "clip.json")
    expected = (tmp_path / "run.safetensors", tmp_path / "run.json")
    assert paths(tmp_path / "run") == paths(tmp_path / "run.safetensors") == paths(str(tmp_path / "run.json")) == expected


def test_nothing_is_pickled(saved):
    _, path = saved
    assert paths(path)[0].read_bytes()[8:9] == b"{"  # safetensors: 8-byte length, then a JSON header
    meta = json.loads(paths(path)[1].read_text())
    assert meta["format"] == 1 and meta["kind"] == "clip" and meta["step"] == 3
    assert meta["config"]["text"] == {"vocab_size": 28, "context_length": 16, "width": 32, "layers": 1,
                                      "heads": 2, "mlp_ratio": 4}


# ----------------------------------------------------------------------------- clear errors
def test_wrong_config_names_the_tensor_and_shapes(saved):
    _, path = saved
    edit_json(path, lambda meta: meta["config"].update(cnn_width=16))
    with pytest.raises(CheckpointError, match=r"visual\.net\.0\.0\.weight has shape \(8, 3, 3, 3\), "
                                              r"the model expects \(16, 3, 3, 3\)"):
        load_clip(path)


def test_wrong_nested_config_names_the_tensor(saved):
    _, path = saved
    edit_json(path, lambda meta: meta["config"]["text"].update(width=48))
    with pytest.raises(CheckpointError, match=r"text\.\S+ has shape \(\d+(, \d+)*\), the model expects"):
        load_clip(path)


def test_missing_or_extra_tensors_are_named(saved):
    model, path = saved
    tensors = dict(model.state_dict())
    del tensors["logit_scale"]
    tensors["unexpected.weight"] = torch.zeros(2)
    checkpoints.save(path, "clip", model.config, tensors)
    with pytest.raises(CheckpointError, match=r"missing \['logit_scale'\], unexpected \['unexpected.weight'\]"):
        load_clip(path)


@pytest.mark.parametrize("keep", [0, 5, 8, 100, "half", "all but one"])
def test_truncated_weights_fail_with_a_checkpoint_error(saved, keep):
    _, path = saved
    weights = paths(path)[0]
    data = weights.read_bytes()
    keep = {"half": len(data) // 2, "all but one": len(data) - 1}.get(keep, keep)
    weights.write_bytes(data[:keep])
    with pytest.raises(CheckpointError, match="clip.safetensors is corrupt or truncated"):
        load_clip(path)


def test_corrupt_json_fails_with_a_checkpoint_error(saved):
    _, path = saved
    paths(path)[1].write_text('{"format": 1, "kind": "cl')
    with pytest.raises(CheckpointError, match="clip.json is corrupt"):
        load_clip(path)


def test_checkpoint_of_another_kind_is_rejected(saved):
    _, path = saved
    with pytest.raises(CheckpointError, match="is not a minidalle 'prior' checkpoint"):
        checkpoints.read_meta(path, "prior")
    edit_json(path, lambda meta: meta.pop("config"))
    with pytest.raises(CheckpointError, match="is not a minidalle 'clip' checkpoint"):
        load_clip(path)


def test_missing_checkpoint_says_how_to_train_one(tmp_path):
    with pytest.raises(CheckpointError, match=r"no checkpoint at .*nothing\.json \(train one with "
                                              r"`python -m minidalle train clip`\)"):
        load_clip(tmp_path / "nothing")


def test_missing_weights_next_to_a_json_are_reported(saved):
    _, path = saved
    paths(path)[0].unlink()
    with pytest.raises(CheckpointError, match=r"no weights at .*clip\.safetensors"):
        load_clip(path)


def test_unknown_config_fields_are_rejected(saved):
    _, path = saved
    edit_json(path, lambda meta: meta["config"].update(depth=12))
    with pytest.raises(CheckpointError, match=r"unknown CLIPConfig fields \['depth'\]"):
        load_clip(path)


def test_unknown_nested_config_fields_are_rejected():
    data = checkpoints.config_to_dict(CLIPConfig.tiny())
    data["text"]["dropout"] = 0.1
    with pytest.raises(CheckpointError, match=r"unknown TextConfig fields \['dropout'\]"):
        config_from_dict(CLIPConfig, data)


def test_missing_config_fields_are_rejected_not_defaulted(saved):
    # heads changes no tensor shape: a default would load the weights into another model silently.
    _, path = saved
    edit_json(path, lambda meta: meta["config"]["text"].pop("heads"))
    with pytest.raises(CheckpointError, match=r"TextConfig config lacks fields \['heads'\]"):
        load_clip(path)


def test_invalid_config_values_fail_with_a_checkpoint_error(saved):
    _, path = saved
    edit_json(path, lambda meta: meta["config"].update(image_encoder="resnet"))
    with pytest.raises(CheckpointError, match="invalid CLIPConfig config: image_encoder must be"):
        load_clip(path)
    edit_json(path, lambda meta: meta["config"].update(image_encoder="cnn", cnn_width="8"))
    with pytest.raises(CheckpointError, match="cannot build a model"):
        load_clip(path)


def test_config_round_trip_restores_tuples_and_nesting():
    config = CLIPConfig(embed_dim=8, text=TextConfig(width=16, layers=1, heads=2))
    assert config_from_dict(CLIPConfig, json.loads(json.dumps(checkpoints.config_to_dict(config)))) == config


# ----------------------------------------------------------------------------- writing
def test_writes_leave_no_temporary_files(saved):
    _, path = saved
    assert sorted(p.name for p in path.parent.iterdir()) == ["clip.json", "clip.safetensors"]


def test_a_failed_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "file.json"
    target.write_text("old")

    def write_half_then_fail(tmp):
        with open(tmp, "w") as f:
            f.write("half-writ")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        checkpoints._atomic_write(target, write_half_then_fail)
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.json"]


def test_ensure_writable_refuses_to_overwrite_without_force(saved, tmp_path):
    _, path = saved
    with pytest.raises(FileExistsError, match="pass force=True"):
        ensure_writable(path)
    ensure_writable(path, force=True)
    ensure_writable(tmp_path / "fresh")
    with pytest.raises(FileExistsError, match="already exists"):  # the trainer checks before any training
        train_clip(CLIPConfig.tiny(), TrainConfig.tiny(), out=path, progress=False, eval_size=0)


# ----------------------------------------------------------------------------- resume
def test_resumed_training_equals_straight_training(tmp_path, monkeypatch):
    config = TrainConfig(steps=8, batch_size=8, warmup=2, eval_every=100, save_every=4)
    straight, straight_trainer = train_clip(CLIPConfig.tiny(), config, out=tmp_path / "straight",
                                            progress=False, eval_size=0)

    class Interrupted(Exception):
        pass

    original_save = Trainer.save

    def save_then_stop(self):  # the first run "crashes" right after its step-4 checkpoint
        original_save(self)
        if self.step == 4:
            raise Interrupted

    monkeypatch.setattr(Trainer, "save", save_then_stop)
    with pytest.raises(Interrupted):
        train_clip(CLIPConfig.tiny(), config, out=tmp_path / "resumed", progress=False, eval_size=0)
    monkeypatch.setattr(Trainer, "save", original_save)
    assert json.loads(paths(tmp_path / "resumed")[1].read_text())["step"] == 4

    resumed, trainer = train_clip(CLIPConfig.tiny(), config, out=tmp_path / "resumed", resume=True,
                                  progress=False, eval_size=0)
    assert trainer.step == 8
    assert trainer.history == straight_trainer.history  # the same 8 losses, 4 of them from the first run
    for name, tensor in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, rtol=0, atol=0, msg=name)
    # The optimizer state on disk matches too, so a third run would continue identically.
    state_a = load_file(str(tmp_path / "straight.state.safetensors"))
    state_b = load_file(str(tmp_path / "resumed.state.safetensors"))
    assert state_a.keys() == state_b.keys()
    for name in state_a:
        assert torch.equal(state_a[name], state_b[name]), name


def test_resume_without_optimizer_state_fails_clearly(saved):
    _, path = saved  # a plain save: weights and JSON, no .state.safetensors
    with pytest.raises(CheckpointError, match=r"cannot resume: .*clip\.state\.safetensors \(optimizer state\) "
                                              r"is missing"):
        train_clip(CLIPConfig.tiny(), TrainConfig.tiny(), out=path, resume=True, progress=False, eval_size=0)
