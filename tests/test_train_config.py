"""TrainConfig checks each option once (an OptionError naming the field); config_diff; OptionError rendering."""

from __future__ import annotations

import dataclasses
import math

import pytest

from maskgen.config import config_diff, format_diff, to_dict
from maskgen.errors import MaskgenError, OptionError
from maskgen.train.config import TrainConfig, default_run_name

BAD = [
    ("mask_rate", 1.0), ("mask_rate", -0.1), ("mask_rate", 1.5), ("mask_rate", math.nan),
    ("lr", 0.0), ("lr", -1e-3), ("lr", math.inf), ("lr", math.nan),
    ("weight_decay", math.nan), ("weight_decay", -1e-4), ("weight_decay", math.inf),
    ("steps", 0), ("batch_size", 0), ("channels", 0), ("depth", 0), ("steps", 2.5),
    ("fg_fraction", 1.5), ("fg_fraction", math.nan), ("dropout", 1.0), ("aug_prob", -0.1), ("val_overlap", 1.0),
    ("val_every", -1), ("seed", -1), ("n_train", 0), ("num_workers", -1),
    ("inputs", "pixels"), ("feature_norm", "batch"), ("aug_device", "gpu"), ("device", "tpu"), ("unet", "big"),
]


@pytest.mark.parametrize("field,value", BAD)
def test_each_bad_value_is_an_option_error_naming_its_field(field, value):
    with pytest.raises(OptionError) as info:
        TrainConfig(features="s.zarr", **{field: value})
    err = info.value
    assert isinstance(err, MaskgenError) and err.field == field
    assert str(err).startswith(f"{field} {value!r}" if isinstance(value, str) else f"{field} {value}")


def test_good_values_pass_and_defaults_are_the_papers():
    cfg = TrainConfig(features="s.zarr", mask_rate=0.0, lr=1.0, weight_decay=0.0, fg_fraction=1.0, n_train=1,
                      num_workers=0, val_every=0, crop_zyx=(64, 64, 128))
    assert cfg.crop_zyx == (64, 64, 128)
    # paper C.1: AdamW 2e-4, weight decay 1e-4, batch 4 (4.1), 250k steps; C.2: each augmentation p = 0.33
    fields = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    assert (fields["lr"], fields["weight_decay"], fields["batch_size"], fields["steps"], fields["aug_prob"]) == (
        2e-4, 1e-4, 4, 250_000, 0.33)


def test_crop_error_names_the_crop_and_depth_fields():
    with pytest.raises(OptionError) as info:
        TrainConfig(features="s.zarr", crop_zyx=(10, 16, 16), depth=2)
    err = info.value
    assert err.field == "crop_zyx" and err.value == (10, 16, 16)
    assert "2**depth=4" in str(err) and "pass e.g. crop_zyx 16,16,8 or a smaller depth" in str(err)
    # rendered for a command line: the flag, the value as typed (x,y,z)
    text = err.render(lambda f: {"crop_zyx": "--crop-size", "depth": "--depth"}[f],
                      lambda f, v: ",".join(map(str, v[::-1])))
    assert text.startswith("--crop-size 16,16,10 must have") and "--crop-size 16,16,8 or a smaller --depth" in text


def test_run_name():
    assert default_run_name("cache/amos.zarr", "both", 0.75, 0) == "amos-both-mr75-s0"
    assert default_run_name("/x/demo.zarr/", "image", 0.0, 3) == "demo-image-mr0-s3"


def test_config_diff_compares_json_forms_of_dataclasses_and_dicts():
    a = TrainConfig(features="s.zarr", crop_zyx=(16, 16, 16), depth=2, train_cases=("a", "b"))
    assert config_diff(a, a) == {}
    assert config_diff(a, to_dict(a)) == {}                       # a tuple equals the list it was saved as
    b = a.replace(mask_rate=0.25, lr=1e-3, crop_zyx=(32, 16, 16))
    diff = config_diff(a, b)
    assert list(diff) == ["mask_rate", "lr", "crop_zyx"]             # field order
    assert diff["mask_rate"] == (0.5, 0.25) and diff["crop_zyx"] == ([16, 16, 16], [32, 16, 16])
    assert list(config_diff(a, b, ignore=("lr", "crop_zyx"))) == ["mask_rate"]
    # dicts with different keys: a missing key compares as None
    assert config_diff({"x": 1, "y": 2}, {"y": 2, "z": 3}) == {"x": (1, None), "z": (None, 3)}
    assert format_diff({"lr": (0.001, 0.5)}, "saved", "now") == "lr: saved 0.001, now 0.5"


def test_mask_rate_defaults_to_erm_with_a_single_input_and_refuses_masking_it():
    """Issue 11.5: `--inputs image` must be ERM, not half-blanked samples."""
    assert TrainConfig(features="s.zarr").mask_rate == 0.5
    assert TrainConfig(features="s.zarr", inputs="image").mask_rate == 0.0
    assert TrainConfig(features="s.zarr", inputs="features").mask_rate == 0.0
    assert TrainConfig(features="s.zarr", inputs="image", mask_rate=0.0, dropout=0.25).dropout == 0.25
    for inputs in ("image", "features"):
        with pytest.raises(OptionError) as info:
            TrainConfig(features="s.zarr", inputs=inputs, mask_rate=0.5)
        err = info.value
        assert err.field == "mask_rate" and "needs both inputs" in str(err)
        flags = err.render(lambda f: "--" + f.replace("_", "-"))
        assert f"--inputs {inputs}" in flags and "--dropout with --inputs image" in flags


def test_crops_too_small_for_the_unets_bottleneck_are_refused():
    TrainConfig(features="s.zarr", crop_zyx=(32, 32, 32), unet="table15")  # zero padding: 1 voxel is enough
    with pytest.raises(OptionError, match=r"too small for the public UNet of depth 5: every side must be at least "
                                          r"64 .*crop_zyx 64,64,64"):
        TrainConfig(features="s.zarr", crop_zyx=(32, 32, 32))


def test_saved_configs_of_older_runs_load_as_the_table15_network():
    cfg = TrainConfig(features="s.zarr", crop_zyx=(64, 64, 64))
    saved = to_dict(cfg)
    assert TrainConfig.from_saved({**saved, "history": [{"step": 3}]}) == cfg
    legacy = {k: v for k, v in saved.items() if k != "unet"}
    assert TrainConfig.from_saved(legacy).unet == "table15"
