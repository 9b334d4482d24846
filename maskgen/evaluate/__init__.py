"""The evaluate stage: scores, predictions, sweeps and analyses of trained runs.

The package itself is callable: `from maskgen import evaluate; evaluate(run)` runs `maskgen.evaluate.api.evaluate`;
`maskgen.predict` is `maskgen.evaluate.api.predict`.
"""

import sys

from maskgen.config import CallableModule

__api__ = "maskgen.evaluate.api:evaluate"  # the function this package stands for when called

sys.modules[__name__].__class__ = CallableModule
