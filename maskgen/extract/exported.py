"""Bring-your-own extractors: exported models (TorchScript, ONNX) that map a (1, 1, Z, Y, X) volume in [0, 1] to
(1, C, Z, Y, X) features on the same grid.

`--extractor torchscript:model.pt` / `--extractor onnx:model.onnx` (onnxruntime, optional extra `maskgen[onnx]`).
Inputs are padded (replicate) so that every spatial size is a multiple of `pad_multiple` (`--pad-multiple`, default
16, what a 4-level UNet needs) and at least twice that, then cropped back. At load the model runs once on a
(1, 1, 2m, 2m, 2m) volume of zeros to learn its channel count C; its output must keep the input's spatial size.
The store's fingerprint records the file's sha256, C and the padding multiple (in `arch`), so a store can only be
completed, trained on online, or predicted with, by the same file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskgen.errors import MaskgenError
from maskgen.extract.base import Extractor

DEFAULT_PAD_MULTIPLE = 16


class ExportedExtractor(Extractor):
    """Shared by the TorchScript and ONNX extractors: padding contract, channel probe, output checks."""

    layer = "output"
    format_name = "exported"

    def __init__(self, path: str | Path, pad_multiple: int | None = None) -> None:
        super().__init__()
        from maskgen.extract.weights import sha256_file

        pad = DEFAULT_PAD_MULTIPLE if pad_multiple is None else pad_multiple
        if not isinstance(pad, int) or isinstance(pad, bool) or pad < 1:
            raise MaskgenError(f"--pad-multiple must be an integer >= 1, got {pad_multiple!r}")
        self.path = Path(path).expanduser()
        if not self.path.is_file():
            raise MaskgenError(f"{self.format_name} model {self.path} does not exist or is not a file")
        self.name = self.kind = self.format_name
        self.size_multiple, self.min_size = pad, 2 * pad
        self.weights_sha256 = sha256_file(self.path)
        self.weights_path = str(self.path)
        self.source = f"{self.format_name}: {self.path}"
        self._load()
        probe = torch.zeros(1, 1, *(self.min_size,) * 3)
        with torch.inference_mode():
            self.out_channels = int(self._checked(probe).shape[1])
        self.freeze()

    def _load(self) -> None:
        raise NotImplementedError

    def _run(self, x: torch.Tensor) -> Any:
        raise NotImplementedError

    def arch(self) -> dict[str, Any]:
        return {"type": self.format_name, "pad_multiple": self.size_multiple}

    def _checked(self, x: torch.Tensor) -> torch.Tensor:
        try:
            out = self._run(x)
        except MaskgenError:
            raise
        except Exception as e:  # the model's own error: name the file and the input it got
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            raise MaskgenError(
                f"{self.format_name} model {self.path} failed on an input of shape {tuple(x.shape)}: "
                f"{type(e).__name__}: {first} (it must map (1, 1, Z, Y, X) in [0, 1] to (1, C, Z, Y, X); if it needs "
                f"sizes that are multiples of more than {self.size_multiple}, raise --pad-multiple)"
            ) from None
        if not isinstance(out, torch.Tensor) or out.ndim != 5 or out.shape[0] != 1 or out.shape[2:] != x.shape[2:]:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise MaskgenError(
                f"{self.format_name} model {self.path} returned {got} for an input of shape {tuple(x.shape)}; "
                "expected one tensor (1, C, Z, Y, X) on the input's grid"
            )
        return out.float()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self._checked(x[i : i + 1]) for i in range(x.shape[0])], dim=0)


class TorchScriptExtractor(ExportedExtractor):
    """A TorchScript archive (`torch.jit.script(model).save(path)` or `torch.jit.trace`)."""

    format_name = "torchscript"

    def _load(self) -> None:
        import warnings

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch 2.9+: TorchScript is deprecated
                module = torch.jit.load(str(self.path), map_location="cpu")
        except Exception as e:  # not a TorchScript zip, truncated file, unknown ops
            raise MaskgenError(
                f"cannot load TorchScript model {self.path}: {type(e).__name__}: "
                f"{(str(e).strip().splitlines() or [''])[0]} (save one with torch.jit.script(model).save(PATH))"
            ) from None
        self.module = module.eval()

    def _run(self, x: torch.Tensor) -> Any:
        return self.module(x)


class OnnxExtractor(ExportedExtractor):
    """An ONNX model run by onnxruntime (CUDA execution provider on `--device cuda` when available)."""

    format_name = "onnx"

    def __init__(self, path: str | Path, pad_multiple: int | None = None, device: str = "cpu") -> None:
        self._device = str(device)
        super().__init__(path, pad_multiple)

    def _load(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise MaskgenError(
                "--extractor onnx:PATH needs onnxruntime: pip install 'maskgen[onnx]' (or onnxruntime-gpu)"
            ) from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, torch.get_num_threads())
        options.log_severity_level = 3
        providers = ["CPUExecutionProvider"]
        if self._device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as e:  # not an ONNX file, unsupported opset
            raise MaskgenError(
                f"cannot load ONNX model {self.path}: {type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"
            ) from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise MaskgenError(f"ONNX model {self.path} has {len(inputs)} inputs; expected one (1, 1, Z, Y, X)")
        self.input_name = inputs[0].name

    def _run(self, x: torch.Tensor) -> Any:
        data = np.ascontiguousarray(x.detach().float().cpu().numpy())
        out = self.session.run(None, {self.input_name: data})[0]
        return torch.from_numpy(np.asarray(out)).to(x.device)
