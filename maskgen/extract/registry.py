"""The one extractor table: every extractor's name, builder, options and identity, and the two ways to get one.

- `build_extractor(spec, weights, layer, device, ...)`: what `maskgen extract --extractor SPEC` runs. SPEC is `auto`,
  a name in the table (`mind`, `anatomix`, a plugin registered under the entry-point group `maskgen.extractors`),
  or `KIND:PATH` for kinds that take a file (`torchscript:model.pt`).
- `rebuild_extractor(fingerprint, ...)`: the extractor that made a store, rebuilt from the fingerprint recorded in
  it (training's `--online-features`, `evaluate`/`predict`, extraction workers). Weights are looked up (the given
  file, the file the store was made from, $MASKGEN_ANATOMIX_WEIGHTS, the hub cache, the shipped default) and never
  downloaded unless asked; the one found must make the same features (`IDENTITY_FIELDS`), else a MaskgenError
  naming both sha256.

`identity_problems` is the one comparison of two fingerprints: the store's compatibility check, `open_run` and the
rebuild use it. The name is informative only: the same weights found under two names make the same features.

This module is light (no torch at import): the CLI lists the choices from it.
"""

from __future__ import annotations

import inspect
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from maskgen.errors import MaskgenError, OptionError

AUTO = "auto"
ENTRY_POINT_GROUP = "maskgen.extractors"
#: Fingerprint entries that determine the features (in this order in messages).
IDENTITY_FIELDS = ("weights_sha256", "layer", "out_channels", "arch")
FIELD_NAMES = {
    "weights_sha256": "extractor weights (sha256)",
    "layer": "feature layer",
    "out_channels": "number of feature channels",
    "arch": "extractor architecture",
}
OPTIONS = ("weights", "layer", "path", "pad_multiple")


class ExtractorFallbackWarning(UserWarning):
    """`--extractor auto` found no anatomix weights and uses another extractor (named in the message)."""


@dataclass(frozen=True)
class Request:
    """What the user asked for, as a builder sees it (options a kind does not take are None)."""

    kind: str
    path: str | None = None        # PATH of `KIND:PATH`
    weights: str | None = None
    layer: str | None = None
    device: str = "cpu"
    allow_download: bool = True
    pad_multiple: int | None = None


@dataclass(frozen=True)
class ExtractorKind:
    """One row of the table."""

    name: str
    build: Callable[[Request], Any]                  # Request -> frozen Extractor (on the CPU)
    help: str
    options: frozenset[str] = frozenset()            # of OPTIONS
    #: Earlier stores lack `kind` in their fingerprint: these `arch["type"]` values say it was this kind.
    arch_types: tuple[str, ...] = ()
    #: `weights_sha256` is the sha256 of the weights file: candidates are checked before anything is built.
    file_sha: bool = False
    #: Weights files to try when rebuilding from a fingerprint: (fingerprint, recorded extract_config) -> [(path,
    #: where it was found)], without the one passed explicitly.
    candidates: Callable[[dict, dict], list[tuple[str, str]]] = field(default=lambda fp, cfg: [])
    #: Fetch the weights (only when a rebuild is allowed to download): () -> path or None.
    download: Callable[[], str | None] | None = None
    plugin: bool = False


# ------------------------------------------------------------------------------------------- built-in builders
def _build_mind(req: Request) -> Any:
    from maskgen.extract.mind import MindSSC

    return MindSSC()


def _build_anatomix(req: Request) -> Any:
    from maskgen.extract import weights as W

    return _anatomix_from(W.require_anatomix_weights(req.weights, req.allow_download), req.layer or "final")


def _anatomix_from(found: Any, layer: str, name: str = "anatomix") -> Any:
    from maskgen.extract import weights as W
    from maskgen.extract.anatomix import LAYERS, AnatomixExtractor

    if layer not in LAYERS:
        raise MaskgenError(f"unknown feature layer {layer!r}; choose one of {', '.join(LAYERS)}")
    net = W.load_anatomix_net(found.path)
    extractor = AnatomixExtractor(net, layer=layer, weights_sha256=W.sha256_file(found.path), name=name,
                                  source=f"{found.origin}: {found.path}")
    extractor.weights_path = str(found.path)
    return extractor


def _anatomix_download() -> str | None:
    from maskgen.extract import weights as W

    path, _ = W._hub_fetch()
    return None if path is None else str(path)


def _anatomix_candidates(fp: dict, recorded: dict) -> list[tuple[str, str]]:
    """Where anatomix-style weights may be, without a download: the recorded file, the env var, the hub cache, the
    shipped default."""
    from maskgen.extract import weights as W

    out: list[tuple[str, str]] = []
    if recorded.get("weights"):
        out.append((str(recorded["weights"]), "the file the store was made from"))
    env = os.environ.get(W.ENV_VAR, "").strip()
    if env:
        out.append((env, W.ENV_VAR))
    cached = W._hub_cache_lookup()
    if cached is not None:
        out.append((str(cached), "hub cache"))
    shipped = W.find_shipped_default()
    if shipped is not None:
        out.append((str(shipped[0].path), "shipped default"))
    return out


def _build_torchscript(req: Request) -> Any:
    from maskgen.extract.exported import TorchScriptExtractor

    return TorchScriptExtractor(str(req.path), req.pad_multiple)


def _build_onnx(req: Request) -> Any:
    from maskgen.extract.exported import OnnxExtractor

    return OnnxExtractor(str(req.path), req.pad_multiple, device=req.device)


def _exported_candidates(fp: dict, recorded: dict) -> list[tuple[str, str]]:
    """The model file named in the store's `extract_config` (`--extractor KIND:PATH`)."""
    _, sep, path = str(recorded.get("extractor") or "").partition(":")
    return [(path, "the file the store was made from")] if sep and path else []


BUILTIN: tuple[ExtractorKind, ...] = (
    ExtractorKind("mind", _build_mind, "MIND-SSC, 12 channels, no weights", arch_types=("MIND-SSC",)),
    ExtractorKind("anatomix", _build_anatomix, "the anatomix 3D UNet (--weights, $MASKGEN_ANATOMIX_WEIGHTS or the hub)",
                  options=frozenset({"weights", "layer"}), arch_types=("AnatomixUNet",), file_sha=True,
                  candidates=_anatomix_candidates, download=_anatomix_download),
    ExtractorKind("torchscript", _build_torchscript, "an exported TorchScript model (1,1,Z,Y,X) -> (1,C,Z,Y,X)",
                  options=frozenset({"path", "pad_multiple"}), arch_types=("torchscript",), file_sha=True,
                  candidates=_exported_candidates),
    ExtractorKind("onnx", _build_onnx, "an ONNX model run by onnxruntime (optional extra maskgen[onnx])",
                  options=frozenset({"path", "pad_multiple"}), arch_types=("onnx",), file_sha=True,
                  candidates=_exported_candidates),
)


# ------------------------------------------------------------------------------------------- plugins
def _plugin_kind(entry_point: Any) -> ExtractorKind:
    """A table row for an entry point `name = "package.module:factory"` of the group `maskgen.extractors`.

    The factory returns a frozen `maskgen.extract.base.Extractor`; the options it takes are the keyword parameters
    of its signature among `weights`, `layer` (and `device`, `allow_download`, which are always passed if accepted).
    """
    name = entry_point.name

    def load() -> Callable[..., Any]:
        try:
            return entry_point.load()
        except Exception as e:  # a broken plugin must not look like a maskgen bug
            raise MaskgenError(f"extractor plugin {name!r} ({entry_point.value}) cannot be loaded: "
                               f"{type(e).__name__}: {e}") from None

    def build(req: Request) -> Any:
        factory = load()
        accepted = _accepted(factory)
        kwargs = {k: getattr(req, k) for k in ("weights", "layer", "device", "allow_download") if k in accepted}
        extractor = factory(**kwargs)
        from maskgen.extract.base import Extractor

        if not isinstance(extractor, Extractor):
            raise MaskgenError(f"extractor plugin {name!r} ({entry_point.value}) returned "
                               f"{type(extractor).__name__}, not a maskgen.extract.base.Extractor")
        if req.weights and getattr(extractor, "weights_path", None) is None:
            extractor.weights_path = str(req.weights)
        return extractor

    def candidates(fp: dict, recorded: dict) -> list[tuple[str, str]]:
        return [(str(recorded["weights"]), "the file the store was made from")] if recorded.get("weights") else []

    return ExtractorKind(name, build, f"plugin {entry_point.value}", options=_PluginOptions(load),
                         candidates=candidates, plugin=True)


class _PluginOptions(frozenset):
    """The options of a plugin, read off its factory's signature only when asked (loading imports the plugin)."""

    def __new__(cls, load: Callable[[], Any]) -> "_PluginOptions":
        self = super().__new__(cls)
        self._load = load
        return self

    def __contains__(self, option: object) -> bool:
        return option in _accepted(self._load())


def _accepted(factory: Callable[..., Any]) -> set[str]:
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return set()
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return {"weights", "layer", "device", "allow_download"}
    return {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return list(entry_points(group=ENTRY_POINT_GROUP))


def kinds() -> dict[str, ExtractorKind]:
    """The built-in kinds, then the installed plugins (a plugin may not take a built-in name or `auto`)."""
    table = {k.name: k for k in BUILTIN}
    for ep in _entry_points():
        if ep.name in table or ep.name == AUTO or ":" in ep.name:
            warnings.warn(f"extractor plugin {ep.name!r} ({ep.value}) is ignored: the name is taken or invalid",
                          stacklevel=2)
            continue
        table[ep.name] = _plugin_kind(ep)
    return table


def choices_help() -> str:
    """The `--extractor` help: auto and the built-in kinds (plugins are listed by `maskgen extract --help` too
    cheaply to matter, but the help text is built at import time, so only the built-ins appear here)."""
    names = [AUTO] + [k.name + (":PATH" if "path" in k.options else "") for k in BUILTIN]
    return " | ".join(names) + f" | a plugin (entry point group {ENTRY_POINT_GROUP})"


# ------------------------------------------------------------------------------------------- specs and options
def parse_spec(spec: str) -> tuple[ExtractorKind | None, str | None]:
    """(table row, PATH) of `--extractor SPEC`; (None, None) for `auto`. MaskgenError naming the choices."""
    text = str(spec or "").strip()
    if text == AUTO:
        return None, None
    name, sep, path = text.partition(":")
    table = kinds()
    kind = table.get(name)
    if kind is None:
        listing = ", ".join([AUTO] + [k.name + (":PATH" if "path" in k.options else "") for k in table.values()])
        raise OptionError("extractor", text, f"is unknown; choose one of {listing} (plugins register under the "
                          f"entry-point group '{ENTRY_POINT_GROUP}')")
    if "path" in kind.options and not (sep and path):
        raise MaskgenError(f"--extractor {name} needs a file: --extractor {name}:PATH")
    if sep and "path" not in kind.options:
        raise MaskgenError(f"--extractor {text!r}: the '{name}' extractor takes no ':PATH'")
    return kind, (path or None)


def check_options(kind: ExtractorKind, weights: Any, layer: Any, pad_multiple: Any) -> None:
    """Refuse options the kind does not take, naming the flag and the kinds that take it (`--layer final`, the
    default layer, is accepted by every kind)."""
    for option, value in (("weights", weights), ("layer", layer), ("pad_multiple", pad_multiple)):
        if value is None or str(value) == "" or (option, value) == ("layer", "final") or option in kind.options:
            continue
        takers = [k.name for k in BUILTIN if option in k.options]
        raise OptionError(option, value, f"is not used by the '{kind.name}' extractor (it applies to "
                          f"{', '.join(takers) or 'plugins that take it'}); drop {{{option}}}")


def build_extractor(
    name: str = AUTO,
    weights: str | os.PathLike | None = None,
    layer: str | None = None,
    device: Any = "cpu",
    allow_download: bool = True,
    pad_multiple: int | None = None,
) -> Any:
    """A frozen extractor on `device` for `--extractor name` (see the module docstring).

    - `anatomix`: weights from `weights` > $MASKGEN_ANATOMIX_WEIGHTS > hub cache > hub download (if allowed and
      online); MaskgenError saying how to pass the file if none is found.
    - `auto`: anatomix if its weights are found; else the maskgen-pretrained extractor shipped in
      `maskgen/extract/weights/default.json` if present; else `mind`. A fallback emits ExtractorFallbackWarning.
    `layer` ("final" | "penultimate", default final) applies to anatomix-style networks.
    """
    kind, path = parse_spec(name)
    weights = None if weights is None or str(weights) == "" else str(weights)
    if kind is None:
        extractor = _build_auto(weights, layer or "final", allow_download)
    else:
        check_options(kind, weights, layer, pad_multiple)
        extractor = kind.build(Request(kind.name, path, weights, layer, str(device), allow_download, pad_multiple))
        extractor.kind = kind.name
    return extractor.to(device)


def _build_auto(weights: str | None, layer: str, allow_download: bool) -> Any:
    from maskgen.extract import weights as W
    from maskgen.extract.mind import MindSSC

    search = W.search_anatomix_weights(weights, allow_download)
    if search.found is not None:
        extractor = _anatomix_from(search.found, layer)
    else:
        shipped = W.find_shipped_default()
        if shipped is not None:
            found, meta = shipped
            extractor = _anatomix_from(found, layer, name=str(meta.get("name", "maskgen-pretrained")))
            what = f"the shipped maskgen-pretrained extractor '{extractor.name}' ({found.path.name})"
        else:
            extractor = MindSSC()
            what = "the 'mind' extractor (MIND-SSC, 12 channels)" + (
                f"; --layer {layer} is ignored" if layer != "final" else "")
        warnings.warn(f"no anatomix weights found ({search.why}); falling back to {what}. For anatomix features, "
                      f"{W.HOW_TO_PASS_FILE}.", ExtractorFallbackWarning, stacklevel=3)
    extractor.kind = "mind" if isinstance(extractor, MindSSC) else "anatomix"
    return extractor


# ------------------------------------------------------------------------------------------- identity
def identity(fingerprint: dict[str, Any]) -> dict[str, Any]:
    return {k: fingerprint.get(k) for k in IDENTITY_FIELDS}


def identity_key(fingerprint: dict[str, Any]) -> str:
    """A hashable key: equal for fingerprints that make the same features."""
    return repr(sorted((k, repr(v)) for k, v in identity(fingerprint).items()))


def describe(fingerprint: dict[str, Any]) -> str:
    sha = fingerprint.get("weights_sha256")
    return f"{fingerprint.get('name')!r} (weights sha256 {sha or 'none'})"


def identity_problems(recorded: dict[str, Any], found: dict[str, Any], recorded_as: str = "store has",
                      found_as: str = "this run has") -> list[str]:
    """Lines naming how `found` would make other features than `recorded` ([] when the same)."""
    diffs = [k for k in IDENTITY_FIELDS if recorded.get(k) != found.get(k)]
    if not diffs:
        return []
    lines = [f"extractor: {recorded_as} {describe(recorded)}, {found_as} {describe(found)}"]
    lines += [f"{FIELD_NAMES[k]}: {recorded_as} {recorded.get(k)!r}, {found_as} {found.get(k)!r}" for k in diffs]
    return lines


def recorded_kind(fingerprint: dict[str, Any], table: dict[str, ExtractorKind] | None = None) -> str:
    """The table name that made a fingerprint (`kind`; older records: by arch type or name)."""
    table = kinds() if table is None else table
    if fingerprint.get("kind") in table:
        return str(fingerprint["kind"])
    arch_type = (fingerprint.get("arch") or {}).get("type") if isinstance(fingerprint.get("arch"), dict) else None
    for kind in table.values():
        if arch_type in kind.arch_types:
            return kind.name
    return str(fingerprint.get("kind") or fingerprint.get("name", ""))


# ------------------------------------------------------------------------------------------- rebuilding
def rebuild_extractor(
    fingerprint: dict[str, Any],
    weights: str | os.PathLike | None = None,
    extract_config: dict[str, Any] | None = None,
    device: Any = "cpu",
    allow_download: bool = False,
    purpose: str = "this command needs the extractor that made the store",
) -> Any:
    """The extractor that made `fingerprint`, frozen on `device`; MaskgenError if none available makes the same
    features.

    Weights: `weights` if given (it must match); else the first of the kind's candidates whose sha256 is the
    recorded one (the file named in `extract_config`, $MASKGEN_ANATOMIX_WEIGHTS, the hub cache, the shipped
    default); a hub download only with `allow_download`. `purpose` starts every error message.
    """
    fp = dict(fingerprint or {})
    if not fp:
        raise MaskgenError(f"{purpose}, but none is recorded; re-create the store with `maskgen extract`")
    table = kinds()
    name = recorded_kind(fp, table)
    kind = table.get(name)
    if kind is None:
        raise MaskgenError(f"{purpose} ({describe(fp)}), a '{name}' extractor, which is not installed here: install "
                           f"the package that registers '{name}' under the entry-point group '{ENTRY_POINT_GROUP}'")
    recorded = dict(extract_config or {})
    takes_file = "weights" in kind.options or "path" in kind.options
    explicit = takes_file and weights is not None and str(weights) != ""
    candidates = [(str(weights), "--weights")] if explicit else (kind.candidates(fp, recorded) if takes_file else [])
    chosen, tried = _choose(kind, fp, candidates)
    if chosen is None and not explicit and allow_download and kind.download is not None:
        fetched = kind.download()
        if fetched is not None:
            chosen, more = _choose(kind, fp, [(fetched, "hub download")])
            tried += more
    if chosen is None and kind.file_sha and tried:
        raise MaskgenError(_mismatch(purpose, fp, tried, explicit))
    layer = fp.get("layer") if "layer" in kind.options else None
    arch = fp.get("arch") if isinstance(fp.get("arch"), dict) else {}
    pad = arch.get("pad_multiple") if "pad_multiple" in kind.options else None
    spec = kind.name
    path = None
    if "path" in kind.options:
        path = chosen
        if path is None:
            raise MaskgenError(f"{purpose} ({describe(fp)}): its file is not at the recorded place; pass it with "
                               "--weights PATH")
        spec = f"{kind.name}:{path}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nothing here falls back silently: the identity check follows
            extractor = build_extractor(spec, weights=None if path else chosen, layer=layer, device=device,
                                        allow_download=False, pad_multiple=pad)
    except MaskgenError as e:
        raise MaskgenError(f"{purpose} ({describe(fp)}): {e}") from None
    problems = identity_problems(fp, extractor.fingerprint(), "the store's is", "the one found here is")
    if problems:
        raise MaskgenError(f"{purpose}, but the one available here would make other features ("
                           + "; ".join(problems) + "); pass the same weights file with --weights.")
    return extractor


def _choose(kind: ExtractorKind, fp: dict, candidates: list[tuple[str, str]]) -> tuple[str | None, list[str]]:
    """The first candidate whose sha256 is the recorded one (file-sha kinds), else the first candidate."""
    if not kind.file_sha:
        return (candidates[0][0] if candidates else None), []
    from maskgen.extract.weights import sha256_file

    tried = []
    for path, origin in candidates:
        if not Path(path).is_file():
            tried.append(f"{path} ({origin}): not found")
            continue
        sha = sha256_file(path)
        if sha == fp.get("weights_sha256"):
            return path, tried
        tried.append(f"{path} ({origin}): weights sha256 {sha}")
    return None, tried


def _mismatch(purpose: str, fp: dict, tried: list[str], explicit: bool) -> str:
    listing = "\n  - ".join(tried) if tried else "(none found)"
    how = ("pass the file that made it" if explicit else "pass the same weights file with --weights")
    return (f"{purpose}: {describe(fp)}, but no weights file found here has that sha256:\n  - {listing}\n"
            f"The features would differ; {how}.")
