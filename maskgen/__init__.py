"""maskgen: domain-generalising 3D segmentation with cached foundation-model features and view masking."""

__version__ = "0.1.0"
