"""`maskgen predict` normalises its inputs as extraction did: by the rule of their domain in the run's pipeline
(`[normalization]` table); a CT-trained run windows a CT volume; `--domain` picks another domain's rule (issue 14)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from typer.testing import CliRunner

from maskgen.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    """Synthetic data with a `ct` (train) and `mr` domain, a pipeline that windows ct and min-max scales the rest,
    its `mind` store and a tiny image-only run trained on ct."""
    from maskgen.demo.synthetic import make_synthetic_dataset
    from maskgen.extract.run import ExtractConfig, run_extract
    from maskgen.train.config import TrainConfig
    from maskgen.train.loop import train

    root = tmp_path_factory.mktemp("ctdata")
    data = make_synthetic_dataset(root / "data", n_cases=3, size=16, contrasts=("ct", "mr"))
    pipeline = data / "pipeline.toml"
    text = pipeline.read_text().replace('normalization = "minmax"\n', "")
    pipeline.write_text(text.replace("[layout]", '[normalization]\nct = "ct"\ndefault = "minmax"\n\n[layout]'))
    store = root / "store.zarr"
    run_extract(ExtractConfig(dataset=str(pipeline), out=str(store), extractor="mind"), progress=False)
    run = root / "run"
    train(TrainConfig(features=str(store), out=str(run), inputs="image", mask_rate=0.0, steps=2, batch_size=1,
                      channels=4, depth=2, crop_zyx=(16, 16, 16), val_every=0, num_workers=0, device="cpu"),
          progress=False)
    return SimpleNamespace(data=data, store=store, run=run, image=next((data / "imagesTr").glob("sub-000_ct*")))


def _predict(ct_run, tmp_path, *extra):
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(ct_run.run), "--input", str(ct_run.image), "--out", str(out),
                                 "--device", "cpu", "--quiet", "--save-probabilities", "--probabilities-format",
                                 "npz", *extra])
    assert result.exit_code == 0, result.output
    return result.stdout, np.load(next(out.glob("*.npz")))["probabilities"]


def _expected_probabilities(ct_run, domain):
    """Softmax of the run on the input preprocessed with `domain`'s rule (the grid is not resampled: 1 mm RAS)."""
    import torch

    from maskgen.data.preprocess import preprocess_image_file
    from maskgen.evaluate.runs import open_run

    run = open_run(ct_run.run, "best", "cpu")
    pre = preprocess_image_file(ct_run.image, run.store.pipeline, None, domain)
    return torch.softmax(run.logits(pre.image, None), 0).numpy(), pre.image


def test_a_ct_trained_run_windows_a_ct_input(ct_run, tmp_path):
    stdout, probs = _predict(ct_run, tmp_path)
    assert "normalisation: ct [-1024, 1024], the rule of the training domain(s) ct" in stdout
    ct_probs, ct_image = _expected_probabilities(ct_run, "ct")
    mm_probs, mm_image = _expected_probabilities(ct_run, "mr")
    assert ct_image.min() >= 0.49 and mm_image.min() == 0.0  # the window maps the synthetic 0 to 0.5
    np.testing.assert_allclose(probs, ct_probs, atol=1e-6)
    assert np.abs(probs - mm_probs).max() > 1e-4  # min-max scaling gives other probabilities (tiny run: small gap)


def test_domain_option_picks_that_domains_rule(ct_run, tmp_path):
    stdout, probs = _predict(ct_run, tmp_path, "--domain", "mr")
    assert "normalisation: minmax, the rule of domain mr" in stdout
    mm_probs, _ = _expected_probabilities(ct_run, "mr")
    np.testing.assert_allclose(probs, mm_probs, atol=1e-6)
    stdout, _ = _predict(ct_run, tmp_path, "--domain", "pet")
    assert "normalisation: minmax, the rule of domain pet (a domain the store and pipeline do not name" in stdout


def test_input_domain_asks_for_domain_when_training_rules_differ(ct_run):
    from maskgen.errors import MaskgenError
    from maskgen.evaluate.predict import input_domain
    from maskgen.store.reader import FeatureStore

    store = FeatureStore(str(ct_run.store))
    cases = [SimpleNamespace(domain="ct", split="train"), SimpleNamespace(domain="mr", split="train")]
    mixed = SimpleNamespace(pipeline=store.pipeline, cases=lambda split=None: [c for c in cases
                                                                              if split in (None, c.split)])
    with pytest.raises(MaskgenError, match="pass --domain NAME"):
        input_domain(mixed, None)
    assert input_domain(mixed, "ct")[0] == "ct"
    plain = SimpleNamespace(pipeline=store.pipeline.__class__(**{**store.pipeline.__dict__,
                                                                 "normalization_by_domain": ()}), cases=mixed.cases)
    assert input_domain(plain, None) == (None, "minmax, the pipeline's rule")
