"""Broken checkpoints, bad devices and wrongly typed config values: each is a ValueError naming
the file, device or key and what is wrong, never an error from deep inside torch or safetensors."""

import json
import shutil

import pytest
import torch

import kolmotok
from kolmotok.api import shipped_checkpoint
from kolmotok.calibration import CALIBRATION_FILE
from kolmotok.checkpoint import CONFIG, WEIGHTS, load_model, resolve_device
from kolmotok.config import ModelConfig, RunConfig, apply_overrides, from_dict, get_preset


@pytest.fixture
def ckpt(tmp_path):
    """A writable copy of the shipped checkpoint, to break."""
    return shutil.copytree(shipped_checkpoint(), tmp_path / "ck")


def _edit_json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _set_model(**values):
    return lambda ck: _edit_json(ck / CONFIG, lambda meta: meta["model"].update(values))


def _set_calibration(**values):
    return lambda ck: _edit_json(ck / CALIBRATION_FILE, lambda data: data["calibrations"][0].update(values))


@pytest.mark.parametrize("damage, match", [
    (lambda ck: (ck / WEIGHTS).write_bytes(b"junk"), "model.safetensors: not a readable safetensors file"),
    (lambda ck: (ck / WEIGHTS).write_bytes(b""), "model.safetensors: not a readable safetensors file"),
    (lambda ck: (ck / CONFIG).write_text("{bad"), "config.json: not valid JSON"),
    (lambda ck: (ck / CONFIG).write_bytes(b"\xff\xfe"), "config.json: not valid JSON"),
    (lambda ck: (ck / CONFIG).write_text("[1]"), "config.json: expected a JSON object, got list"),
    (lambda ck: _edit_json(ck / CONFIG, lambda meta: meta.pop("model")), "config.json: no 'model' section"),
    (_set_model(width=64), "the weights in model.safetensors do not match its config.json: .* of another shape"),
    (_set_model(halting_hidden=0), "the weights in model.safetensors do not match its config.json: .*unexpected"),
    (_set_model(width="abc"), r"config.json:model.width: expected an integer, got str 'abc'"),
    (_set_model(mlp_ratio=[4]), r"config.json:model.mlp_ratio: expected a number, got list"),
    (_set_model(fsq_levels=[8, "x"]), r"config.json:model.fsq_levels\[1\]: expected an integer"),
    (_set_model(num_heads=0), "config.json: model.num_heads must be >= 1, got 0"),
    (_set_model(num_heads=3), "config.json: width 128 is not divisible by num_heads 3"),
    (_set_calibration(conditions=[]), "calibration.json: calibration 0 is not valid: .* equal length"),
    (_set_calibration(alpha="0.1"), r"calibration.json: calibration 0 is not valid: alpha must be a miss rate in"),
    (_set_calibration(epsilons=[0.2, 0.1] * 32), "calibration.json: calibration 0 is not valid: epsilons must inc"),
    (_set_calibration(attainable=[1] * 64), "calibration.json: calibration 0 is not valid: attainable"),
])
def test_broken_checkpoint_is_a_value_error_naming_it(ckpt, damage, match):
    damage(ckpt)
    with pytest.raises(ValueError, match=match) as exc:
        kolmotok.load(ckpt, device="cpu")
    assert str(ckpt) in str(exc.value)


def test_load_model_names_the_checkpoint_of_a_run_directory(tmp_path):
    ckpt = shutil.copytree(shipped_checkpoint(), tmp_path / "run" / "checkpoints" / "step_0000002")
    (ckpt / WEIGHTS).write_bytes(b"junk")
    with pytest.raises(ValueError, match="step_0000002/model.safetensors"):
        load_model(tmp_path / "run")


@pytest.mark.parametrize("path", [5, 1.5, ["ck"], b"ck"])
def test_load_rejects_a_path_that_is_not_a_path(path):
    with pytest.raises(ValueError, match="checkpoint path must be a directory"):
        kolmotok.load(path, device="cpu")


@pytest.mark.parametrize("device, match", [
    ("bogus", "device 'bogus': not a device name"),
    ("", "device '': not a device name"),
    (1.5, "device '1.5': not a device name"),
    ("cuda", "device 'cuda' requested but CUDA is not available"),
    ("cuda:1", "device 'cuda:1' requested but CUDA is not available"),
    (torch.device("cuda"), "device 'cuda' requested but CUDA is not available"),
])
def test_unusable_device_is_a_value_error(monkeypatch, device, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=match):
        resolve_device(device)
    with pytest.raises(ValueError, match=match):
        kolmotok.load(device=device)


def test_cuda_index_beyond_the_devices_is_a_value_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError, match="device 'cuda:1': this machine has 1 cuda device"):
        resolve_device("cuda:1")


def test_resolve_device_defaults(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(None) == resolve_device("auto") == resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


# ---------------------------------------------------------------------------- config values

@pytest.mark.parametrize("override, match", [
    ("optim.lr=abc", "override optim.lr: expected a number, got str 'abc'"),
    ("optim.lr=NaN", "override optim.lr: expected a number, got nan"),
    ("model.width=abc", "override model.width: expected an integer, got str 'abc'"),
    ("model.width=4.5", "override model.width: expected an integer, got float 4.5"),
    ("model.linear_path=False", "override model.linear_path: expected a boolean, got str 'False'"),
    ("train.steps=true", "override train.steps: expected an integer, got bool True"),
    ("optim.betas=[0.9]", r"override optim.betas: expected a list of 2 numbers, got list \[0.9\]"),
    ("model.fsq_levels=8", "override model.fsq_levels: expected a list of integers, got int 8"),
    ('model.fsq_levels=[8, "x"]', r"override model.fsq_levels\[1\]: expected an integer, got str 'x'"),
    ("model=3", "override model: expected an object, got int"),
])
def test_override_of_the_wrong_type_is_a_value_error(override, match):
    with pytest.raises(ValueError, match=match):
        apply_overrides(get_preset("tiny"), [override])


def test_overrides_convert_where_the_meaning_is_clear():
    cfg = apply_overrides(get_preset("tiny"), ["optim.lr=1", "optim.betas=[1, 0.9]", "model.fsq_levels=[8, 5]",
                                               "train.data=123", "train.seed=7"])
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float
    assert cfg.optim.betas == (1.0, 0.9) and cfg.model.fsq_levels == (8, 5)
    assert cfg.train.data == "123" and cfg.train.seed == 7  # a string field takes the text as written
    assert apply_overrides(get_preset("tiny"), ["optim.grad_clip=Infinity"]).optim.grad_clip == float("inf")


def test_from_dict_names_the_key_with_the_wrong_type():
    with pytest.raises(ValueError, match=r"run.json.optim.weight_decay: expected a number, got NoneType None"):
        from_dict(RunConfig, {"optim": {"weight_decay": None}}, where="run.json")
    with pytest.raises(ValueError, match=r"config.stem: expected a string, got int 3"):
        from_dict(ModelConfig, {"stem": 3})
    built = from_dict(ModelConfig, {"fsq_levels": [8, 5], "mlp_ratio": 2})
    assert built == ModelConfig(fsq_levels=(8, 5), mlp_ratio=2.0) and type(built.mlp_ratio) is float
