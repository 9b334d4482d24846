"""The train stage: a view-masked segmentation UNet trained on crops streamed from a feature store.

Public API (import from the modules; this package imports nothing heavy):
`maskgen.train.config.TrainConfig`, `maskgen.train.loop.train`, `maskgen.train.checkpoint.load_run`,
`maskgen.train.inputs.assemble_inputs`,
`maskgen.train.inference.predict_volume`, `maskgen.train.unet.UNet`, `maskgen.train.masking.view_mask`.
The package itself is callable: `from maskgen import train; train(store, ...)` runs `maskgen.train.api.train`.
"""

import sys

from maskgen.config import CallableModule

__api__ = "maskgen.train.api:train"  # the function this package stands for when called

sys.modules[__name__].__class__ = CallableModule
