"""Cost of the per-step finite-weights check (`maskgen.train.finite.WeightsCheck`) against the training step.

After every AdamW update the train loop tests every parameter and floating buffer for NaN/inf with one fused
reduction (`torch._foreach_norm`, stacked, `isfinite().all()`, one host sync). This times, interleaved
round by round, one optimisation step of maskgen's own `optimise` (forward, Dice+CE, backward, AdamW) on a ready
input and the check on the same model, and reports the check's share of a step. Also a flat alternative for
comparison: `torch.cat` of every tensor, then one `isfinite().all()` (copies all weights each step), and the
max-norm variant (`ord=inf`, which cannot overflow).

    python -m benchmarks finite_check                                   # CPU: the demo-sized UNet (8 ch, depth 4, 64^3)
    python -m benchmarks finite_check --channels 20 --depth 5 --crop 64 # the paper's UNet (36.9M parameters)
    python -m benchmarks finite_check --device cuda --channels 20 --depth 5 --crop 128 --batch 4
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import common


def _flat_check(tensors: list[Any]) -> bool:
    import torch

    return bool(torch.cat([t.reshape(-1) for t in tensors]).isfinite().all())


def measure(args: Any) -> dict[str, Any]:
    import torch

    from maskgen.train.finite import WeightsCheck
    from maskgen.train.step import make_loss, optimise
    from maskgen.train.unet import UNet, count_parameters

    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model = UNet(args.inputs, args.classes, args.channels, args.depth).place(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-4)
    loss_fn = make_loss()
    z = torch.rand(args.batch, args.inputs, *(args.crop,) * 3, device=device)
    label = torch.randint(0, args.classes, (args.batch, 1, *(args.crop,) * 3), device=device)
    check = WeightsCheck(model)

    variants = {
        "step": lambda _r: optimise(model, optimizer, loss_fn, z, label, 2e-4, device),
        "check": lambda _r: check(),
        "flat_check": lambda _r: _flat_check(check.tensors),
        "maxnorm_check": lambda _r: bool(torch.stack(torch._foreach_norm(check.tensors, ord=float("inf")))
                                         .isfinite().all()),
    }
    times = common.interleaved(variants, repeats=args.repeats, warmup=args.warmup, device=device)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "parameters": count_parameters(model),
        "step_ms": round(med["step"] * 1e3, 3),
        "check_ms": round(med["check"] * 1e3, 3),
        "flat_check_ms": round(med["flat_check"] * 1e3, 3),
        "check_share_of_step_pct": round(100 * med["check"] / med["step"], 3),
        "flat_check_share_of_step_pct": round(100 * med["flat_check"] / med["step"], 3),
        "maxnorm_check_ms": round(med["maxnorm_check"] * 1e3, 3),
        "repeats": args.repeats,
    }


def main(argv: list[str] | None = None) -> None:
    ap = common.parser(__doc__.splitlines()[0], "finite_check")
    ap.add_argument("--channels", type=int, default=8)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--crop", type=int, default=64)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--inputs", type=int, default=17, help="input channels (image + 16 anatomix features)")
    ap.add_argument("--classes", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args(argv)
    common.setup(args)
    result = measure(args)
    common.record("finite_check", {**common.settings(args, "channels", "depth", "crop", "batch", "inputs", "classes"),
                                   **result}, args.results)


if __name__ == "__main__":
    main()
