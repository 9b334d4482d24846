"""Finding, reading and strictly loading anatomix-style weights (official `anatomix.pth` or maskgen checkpoints).

Resolution order: `--weights PATH` > `$MASKGEN_ANATOMIX_WEIGHTS` > Hugging Face hub cache (`neeldey/anatomix`,
`anatomix.pth`) > hub download (only when allowed and not offline). Accepted file contents:
- a plain state_dict (the official layout), keys optionally prefixed by `_orig_mod.` (torch.compile) or `module.`;
- a maskgen checkpoint `{"state_dict": ..., "arch": {"input_nc", "output_nc", "ngf", "num_downs", "norm"}, ...}`
  (written by `save_anatomix_checkpoint`), whose `arch` builds the matching network.
Without an `arch`, the architecture is read off the tensor shapes (the official file gives the default network).
"""

from __future__ import annotations

import hashlib
import json
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from maskgen.atomic import atomic_path
from maskgen.errors import MaskgenError
from maskgen.extract.anatomix import NORMS, AnatomixUNet

ENV_VAR = "MASKGEN_ANATOMIX_WEIGHTS"
HUB_REPO = "neeldey/anatomix"
HUB_FILENAME = "anatomix.pth"
#: Folder of weights shipped inside the package; `default.json` there ({"file": ..., "name": ...}) names the
#: maskgen-pretrained extractor that `--extractor auto` uses when no anatomix weights are found.
SHIPPED_DIR = Path(__file__).resolve().parent / "weights"
SHIPPED_MANIFEST = "default.json"

_PREFIXES = ("_orig_mod.", "module.")
_ARCH_KEYS = ("input_nc", "output_nc", "ngf", "num_downs", "norm", "input_transform", "append_input")
HOW_TO_PASS_FILE = (
    f"pass the file with --weights PATH or set {ENV_VAR}=PATH (the public file is '{HUB_FILENAME}' in the "
    f"Hugging Face repository '{HUB_REPO}')"
)
HOW_TO_PASS = HOW_TO_PASS_FILE + ", or use --extractor mind"


@dataclass(frozen=True)
class WeightsFile:
    path: Path
    origin: str  # "--weights" | ENV_VAR | "hub-cache" | "hub-download" | "shipped"


#: Seconds the one request to the hub may take before `--extractor auto` gives up on it ($MASKGEN_HUB_TIMEOUT).
HUB_TIMEOUT_ENV = "MASKGEN_HUB_TIMEOUT"
DEFAULT_HUB_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class WeightsSearch:
    """The outcome of a weights lookup: the file (or None) and, when none was found, why (one clause)."""

    found: WeightsFile | None
    why: str = ""


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return True
    try:
        from huggingface_hub import constants
    except ImportError:
        return True
    return bool(constants.HF_HUB_OFFLINE)


def hub_timeout() -> float:
    text = os.environ.get(HUB_TIMEOUT_ENV, "").strip()
    try:
        value = float(text) if text else DEFAULT_HUB_TIMEOUT_S
    except ValueError:
        raise MaskgenError(f"{HUB_TIMEOUT_ENV}={text!r} is not a number of seconds") from None
    return value if value > 0 else DEFAULT_HUB_TIMEOUT_S


def _hub_cache_lookup() -> Path | None:
    """The hub-cached `anatomix.pth`, without any network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(HUB_REPO, HUB_FILENAME)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:  # a redirect (to the CDN) means "it is there"
        return None


def _hub_probe(timeout: float) -> str | None:
    """One HEAD request for the file on the hub ($HF_ENDPOINT), no retries: None if it is there, else why not.

    `hf_hub_download` alone retries with long timeouts (25-30 s when the hub refuses connections, minutes when it
    does not answer), so the hub is asked once, briefly, before any download."""
    try:
        from huggingface_hub import hf_hub_url
    except ImportError:
        return "huggingface_hub is not installed"
    url = hf_hub_url(HUB_REPO, HUB_FILENAME)
    opener = urllib.request.build_opener(_NoRedirect)
    try:
        opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
    except urllib.error.HTTPError as e:
        if 300 <= e.code < 400:
            return None
        return f"the hub answered HTTP {e.code} for {url}"
    except (OSError, ValueError) as e:  # refused, unreachable, DNS, timeout (socket.timeout is an OSError)
        reason = getattr(e, "reason", None) or e
        text = "no answer" if isinstance(reason, TimeoutError) or "timed out" in str(reason) else str(reason)
        return f"the hub ({url.split('/' + HUB_REPO)[0]}) was tried once for {timeout:g} s: {text}"
    return None


def _hub_download(timeout: float) -> Path:
    """Download `anatomix.pth` into the hub cache (raises on any failure)."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(HUB_REPO, HUB_FILENAME, etag_timeout=timeout))


def _hub_fetch() -> tuple[Path | None, str]:
    """(the downloaded file, "") or (None, why): one short probe of the hub first, then the download."""
    if _hub_offline():
        return None, "HF_HUB_OFFLINE is set, so the hub was not asked"
    timeout = hub_timeout()
    problem = _hub_probe(timeout)
    if problem is not None:
        return None, problem + f" (set HF_HUB_OFFLINE=1 to skip this check, {HUB_TIMEOUT_ENV} to change the wait)"
    try:
        return _hub_download(timeout), ""
    except Exception as e:  # network, auth, disk: any failure means "not available"
        return None, f"could not download {HUB_FILENAME} from {HUB_REPO}: {type(e).__name__}: {e}"


def search_anatomix_weights(weights: str | os.PathLike | None = None, allow_download: bool = True) -> WeightsSearch:
    """The anatomix weights file to use, or why there is none: `weights` > $MASKGEN_ANATOMIX_WEIGHTS > the local hub
    cache > (if allowed, and HF_HUB_OFFLINE is not set) the hub, asked once with a short timeout.

    An explicit `weights` path or `$MASKGEN_ANATOMIX_WEIGHTS` that does not exist is an error, not a fallback.
    """
    if weights is not None and str(weights) != "":
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MaskgenError(f"weights file {path} (--weights) does not exist or is not a file")
        return WeightsSearch(WeightsFile(path, "--weights"))
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_file():
            raise MaskgenError(f"{ENV_VAR}={env} does not exist or is not a file; fix or unset the variable")
        return WeightsSearch(WeightsFile(path, ENV_VAR))
    cached = _hub_cache_lookup()
    if cached is not None:
        return WeightsSearch(WeightsFile(cached, "hub-cache"))
    if not allow_download:
        return WeightsSearch(None, "not in the Hugging Face cache; download not allowed")
    path, why = _hub_fetch()
    if path is None:
        return WeightsSearch(None, f"not in the Hugging Face cache; {why}")
    return WeightsSearch(WeightsFile(path, "hub-download"))


def find_anatomix_weights(weights: str | os.PathLike | None = None, allow_download: bool = True) -> WeightsFile | None:
    """The anatomix weights file to use, or None if none is available (`search_anatomix_weights` says why)."""
    return search_anatomix_weights(weights, allow_download).found


def require_anatomix_weights(weights: str | os.PathLike | None = None, allow_download: bool = True) -> WeightsFile:
    search = search_anatomix_weights(weights, allow_download)
    if search.found is None:
        raise MaskgenError(f"no anatomix weights found ({search.why}): {HOW_TO_PASS}")
    return search.found


def find_shipped_default(directory: Path | None = None) -> tuple[WeightsFile, dict[str, Any]] | None:
    """The maskgen-pretrained extractor shipped in `maskgen/extract/weights/`, if its `default.json` exists."""
    directory = SHIPPED_DIR if directory is None else Path(directory)
    manifest = directory / SHIPPED_MANIFEST
    if not manifest.is_file():
        return None
    try:
        meta = json.loads(manifest.read_text())
        path = directory / meta["file"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise MaskgenError(f"{manifest} is unreadable or lacks a 'file' entry ({e}); reinstall maskgen") from None
    if not path.is_file():
        raise MaskgenError(f"{manifest} names {path}, which does not exist; reinstall maskgen")
    return WeightsFile(path, "shipped"), meta


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _strip_prefixes(state: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in state.items():
        k = key
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if k.startswith(prefix):
                    k, changed = k[len(prefix) :], True
        out[k] = value
    return out


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """(state_dict with prefixes removed, arch dict or None) of a weights file, loaded with weights_only=True."""
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling refusal, truncated zip, not a torch file
        raise MaskgenError(
            f"cannot read weights file {path}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
            "(expected a torch state_dict such as anatomix.pth or a maskgen checkpoint)"
        ) from None
    arch = None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        arch = obj.get("arch")
        if arch is not None and not isinstance(arch, dict):
            raise MaskgenError(f"weights file {path}: 'arch' must be a dict, got {type(arch).__name__}")
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise MaskgenError(
            f"weights file {path} holds no state_dict (expected a dict of tensors, as in anatomix.pth, "
            "or a maskgen checkpoint with a 'state_dict' entry)"
        )
    return _strip_prefixes(obj), arch


def infer_arch(state: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    """AnatomixUNet kwargs read off the shapes of a state_dict in its layout, or None if it is not one."""
    convs = sorted(
        (int(k.split(".")[1]), v)
        for k, v in state.items()
        if k.startswith("model.") and k.endswith(".weight") and v.ndim == 5 and k.count(".") == 2
    )
    if len(convs) < 8 or (len(convs) - 4) % 4:
        return None
    first, last = convs[0][1], convs[-1][1]
    norm = "batch" if any(k.endswith("running_mean") for k in state) else "instance"
    return {
        "input_nc": int(first.shape[1]),
        "output_nc": int(last.shape[0]),
        "ngf": int(first.shape[0]),
        "num_downs": (len(convs) - 4) // 4,
        "norm": norm,
    }


def _check_arch(arch: dict[str, Any], path: Path) -> dict[str, Any]:
    arch = {k: v for k, v in arch.items() if k != "type"}
    unknown = sorted(set(arch) - set(_ARCH_KEYS))
    if unknown:
        raise MaskgenError(f"weights file {path}: unknown arch entries {unknown} (known: {list(_ARCH_KEYS)})")
    if "norm" in arch and arch["norm"] not in NORMS:
        raise MaskgenError(f"weights file {path}: arch norm {arch['norm']!r} is not one of {NORMS}")
    return arch


def _mismatch_message(path: Path, arch: dict[str, Any], model_state: dict, file_state: dict) -> str | None:
    missing = [k for k in model_state if k not in file_state]
    unexpected = [k for k in file_state if k not in model_state]
    shapes = [
        f"{k}: file {tuple(file_state[k].shape)} vs model {tuple(v.shape)}"
        for k, v in model_state.items()
        if k in file_state and tuple(file_state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or shapes):
        return None
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing keys (first: {missing[:5]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected keys (first: {unexpected[:5]})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatches (first: {shapes[:3]})")
    return (
        f"weights file {path} does not match AnatomixUNet({arch}): " + "; ".join(parts)
        + f". Expected the official '{HUB_FILENAME}' ({HUB_REPO}) or a maskgen anatomix checkpoint."
    )


def load_anatomix_net(path: str | os.PathLike) -> AnatomixUNet:
    """A fresh AnatomixUNet (eval mode) with the file's weights, loaded strictly; MaskgenError on any mismatch."""
    path = Path(path)
    state, arch = read_checkpoint(path)
    if arch is not None:
        arch = _check_arch(arch, path)
    else:
        arch = infer_arch(state) or {}
    try:
        net = AnatomixUNet(**arch)
    except (TypeError, ValueError) as e:
        raise MaskgenError(f"weights file {path}: cannot build AnatomixUNet from arch {arch}: {e}") from None
    message = _mismatch_message(path, net.arch(), net.state_dict(), state)
    if message:
        raise MaskgenError(message)
    net.load_state_dict(state, strict=True)
    return net.eval()


def save_anatomix_checkpoint(net: AnatomixUNet, path: str | os.PathLike, extra: dict[str, Any] | None = None) -> Path:
    """Write `{"state_dict", "arch", **extra}` atomically (temp file in the same folder, then rename).

    `extra` must hold only weights_only-loadable values (tensors, numbers, strings, lists, dicts).
    """
    path = Path(path)
    payload: dict[str, Any] = dict(extra or {})
    state = net.state_dict()
    payload.update(
        state_dict={k.removeprefix("_orig_mod."): v.detach().cpu() for k, v in state.items()},
        arch=dict(getattr(net, "_orig_mod", net).arch()),
    )
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path
