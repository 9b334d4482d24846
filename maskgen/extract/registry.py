"""`build_extractor`: the one entry point that turns `--extractor/--weights/--layer` into a frozen Extractor."""

from __future__ import annotations

import os
import warnings

import torch

from maskgen.errors import MaskgenError
from maskgen.extract.anatomix import LAYERS, AnatomixExtractor
from maskgen.extract.base import Extractor
from maskgen.extract.mind import MindSSC
from maskgen.extract import weights as W

EXTRACTORS = ("auto", "anatomix", "mind")


class ExtractorFallbackWarning(UserWarning):
    """`--extractor auto` found no anatomix weights and uses another extractor (named in the message)."""


def _anatomix_from(found: W.WeightsFile, layer: str, name: str = "anatomix") -> AnatomixExtractor:
    net = W.load_anatomix_net(found.path)
    return AnatomixExtractor(
        net, layer=layer, weights_sha256=W.sha256_file(found.path), name=name, source=f"{found.origin}: {found.path}"
    )


def build_extractor(
    name: str = "auto",
    weights: str | os.PathLike | None = None,
    layer: str = "final",
    device: str | torch.device = "cpu",
    allow_download: bool = True,
) -> Extractor:
    """A frozen extractor on `device`.

    - `anatomix`: weights from `weights` > $MASKGEN_ANATOMIX_WEIGHTS > hub cache > hub download (if allowed and
      online); MaskgenError saying how to pass the file if none is found.
    - `mind`: MIND-SSC (12 channels, no weights).
    - `auto`: anatomix if its weights are found; else the maskgen-pretrained extractor shipped in
      `maskgen/extract/weights/default.json` if present; else `mind`. A fallback emits ExtractorFallbackWarning.
    `layer` ("final" | "penultimate") applies to anatomix-style networks.
    """
    if name not in EXTRACTORS:
        raise MaskgenError(f"unknown extractor {name!r}; choose one of {', '.join(EXTRACTORS)}")
    if layer not in LAYERS:
        raise MaskgenError(f"unknown feature layer {layer!r}; choose one of {', '.join(LAYERS)}")
    extractor: Extractor
    if name == "mind":
        if weights is not None:
            raise MaskgenError(f"--weights {weights} is only used by anatomix; drop it or use --extractor anatomix")
        if layer != "final":
            raise MaskgenError(f"--layer {layer} applies to anatomix only; drop it for --extractor mind")
        extractor = MindSSC()
    elif name == "anatomix":
        extractor = _anatomix_from(W.require_anatomix_weights(weights, allow_download), layer)
    else:
        found = W.find_anatomix_weights(weights, allow_download)
        if found is not None:
            extractor = _anatomix_from(found, layer)
        else:
            shipped = W.find_shipped_default()
            if shipped is not None:
                found, meta = shipped
                extractor = _anatomix_from(found, layer, name=str(meta.get("name", "maskgen-pretrained")))
                what = f"the shipped maskgen-pretrained extractor '{extractor.name}' ({found.path.name})"
            else:
                extractor = MindSSC()
                what = "the 'mind' extractor (MIND-SSC, 12 channels)" + (
                    f"; --layer {layer} is ignored" if layer != "final" else ""
                )
            warnings.warn(
                f"no anatomix weights found; falling back to {what}. For anatomix features, {W.HOW_TO_PASS_FILE}.",
                ExtractorFallbackWarning,
                stacklevel=2,
            )
    return extractor.to(device)
