"""maskgen: domain-generalising 3D segmentation with cached foundation-model features and view masking.

Python API (docs/python-api.md): `from maskgen import extract, train, evaluate, predict`. `extract`, `train` and
`evaluate` are the stage packages, callable as functions (`maskgen.config.CallableModule`); importing `maskgen` stays
light: each function imports torch, zarr and MONAI when called.
"""

__version__ = "0.1.0"
__all__ = ["extract", "train", "evaluate", "predict", "__version__"]


def __getattr__(name: str):  # noqa: ANN202 - PEP 562: the API, imported on first use
    import importlib

    if name in ("extract", "train", "evaluate"):
        return importlib.import_module(f"maskgen.{name}")  # callable packages (maskgen.config.CallableModule)
    if name == "predict":
        return importlib.import_module("maskgen.evaluate.api").predict
    raise AttributeError(f"module 'maskgen' has no attribute {name!r}")
