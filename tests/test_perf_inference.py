"""Inference speed-ups of issue 16.2 change no prediction.

`predict_volume` slides MONAI over the image alone and takes each window's features from the features in their
stored dtype (float16) with the same slices; it must give what the stacked implementation gave (the (1+C)-channel
float32 volume, MONAI padding it), for every input mode, both feature normalisations, volumes smaller than the
window and several windows per batch. Store reads for inference skip the features of image-only runs and keep a
float16 store's values in float16.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests._helpers import synthetic_store


def _stacked_reference(model, image, features, cfg, overlap, stats, sw_batch_size):
    """The implementation before issue 16.2: raw (1+C)-channel float32 stack, MONAI pads it and slides over it."""
    from monai.inferers import sliding_window_inference

    from maskgen.train.inputs import assemble_inputs, raw_stack, split_window

    raw = raw_stack(np.asarray(image, np.float32), None if features is None else np.asarray(features, np.float32),
                    cfg.inputs)

    def predictor(window):
        img, feats = split_window(window, cfg.inputs)
        return model(assemble_inputs(img, feats, cfg, stats)).float()

    with torch.no_grad():
        out = sliding_window_inference(raw, roi_size=cfg.crop_zyx, sw_batch_size=sw_batch_size, predictor=predictor,
                                       overlap=overlap, mode="gaussian", padding_mode="constant", cval=0.0)
    return torch.softmax(out[0].float(), dim=0)


CASES = [  # inputs, feature_norm, shape (zyx; some sides under the 16^3 window), windows per batch
    ("both", "crop", (20, 28, 24), 3),
    ("both", "volume", (13, 28, 19), 1),
    ("image", "crop", (15, 20, 30), 2),
    ("features", "crop", (21, 11, 24), 2),
]


@pytest.mark.parametrize("inputs,norm,shape,sw", CASES)
def test_predict_volume_matches_the_stacked_implementation(inputs, norm, shape, sw):
    from maskgen.train.inference import predict_volume
    from maskgen.train.inputs import input_channels
    from maskgen.train.unet import UNet

    rng = np.random.default_rng(0)
    c = 5
    image = rng.random((1, *shape)).astype(np.float16)              # a float16 store's values
    features = (rng.standard_normal((c, *shape)) * 3 + 1).astype(np.float16)
    feats = None if inputs == "image" else features
    stats = (features.astype(np.float32).mean(axis=(1, 2, 3)), features.astype(np.float32).std(axis=(1, 2, 3)))
    stats = stats if norm == "volume" else None
    torch.manual_seed(0)
    model = UNet(input_channels(inputs, c), 3, 4, 2).place("cpu").eval()
    cfg = SimpleNamespace(inputs=inputs, feature_norm=norm, crop_zyx=(16, 16, 16), batch_size=sw)

    want = _stacked_reference(model, image, feats, cfg, 0.5, stats, sw)
    got16 = predict_volume(model, image, feats, cfg, "cpu", 0.5, stats)
    got32 = predict_volume(model, image.astype(np.float32), None if feats is None else feats.astype(np.float32),
                           cfg, "cpu", 0.5, stats)
    assert got16.shape == (3, *shape) and got16.dtype == torch.float32
    torch.testing.assert_close(got16, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got32, got16, rtol=0, atol=0)


def test_monai_slides_over_the_image_alone(monkeypatch):
    """The features are never stacked with the image into one float32 volume: MONAI gets the one-channel image."""
    import monai.inferers

    from maskgen.train.inference import predict_volume
    from maskgen.train.unet import UNet

    real = monai.inferers.sliding_window_inference
    seen = []

    def spy(inputs, *args, **kwargs):
        seen.append((tuple(inputs.shape), inputs.dtype))
        return real(inputs, *args, **kwargs)

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", spy)
    model = UNet(1 + 4, 2, 4, 2).place("cpu").eval()
    cfg = SimpleNamespace(inputs="both", feature_norm="crop", crop_zyx=(16, 16, 16), batch_size=2)
    image = np.random.default_rng(1).random((1, 20, 20, 20)).astype(np.float16)
    features = np.random.default_rng(2).random((4, 20, 20, 20)).astype(np.float16)
    predict_volume(model, image, features, cfg, "cpu")
    assert seen == [((1, 1, 20, 20, 20), torch.float32)]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return synthetic_store(tmp_path_factory.getbasetemp() / "train-tiny-store")  # shared with test_train_*.py


@pytest.mark.parametrize("dtype", ["int8", "float16"])
def test_inference_reads_skip_features_of_image_only_runs_and_keep_float16(dtype, tmp_path_factory, monkeypatch):
    from maskgen.store.reader import FeatureStore
    from maskgen.train.inference import read_for_inference

    fs = FeatureStore(synthetic_store(tmp_path_factory.getbasetemp() / f"inference-{dtype}", n_cases=3, size=24,
                                     dtype=dtype))
    case = fs.cases()[0].case_id
    full = fs.read_case(case)
    fetched = []
    real = FeatureStore._read_into

    def spy(self, case_id, items, *args, **kwargs):
        fetched.append([item[0] for item in items])
        return real(self, case_id, items, *args, **kwargs)

    monkeypatch.setattr(FeatureStore, "_read_into", spy)
    erm = read_for_inference(fs, case, with_features=False)
    assert fetched[-1] == ["image", "label"] and erm["features"] is None
    both = read_for_inference(fs, case, with_features=True)
    assert fetched[-1] == ["image", "features", "label"]
    kept = np.float16 if dtype == "float16" else np.float32  # int8 features are dequantised to float32
    assert both["image"].dtype == kept and both["features"].dtype == kept
    np.testing.assert_array_equal(both["features"].astype(np.float32), full["features"])
    np.testing.assert_array_equal(erm["image"].astype(np.float32), full["image"])
    np.testing.assert_array_equal(erm["label"], full["label"])
