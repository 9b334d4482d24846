"""The extract stage: a frozen feature extractor run once per case, its output cached in a feature store.

The package itself is callable: `from maskgen import extract; extract("demo", ...)` runs `maskgen.extract.api.extract`.
"""

import sys

from maskgen.config import CallableModule

__api__ = "maskgen.extract.api:extract"  # the function this package stands for when called

sys.modules[__name__].__class__ = CallableModule
