"""The demo dataset on the console: generate (or reuse) it with a progress bar, then print what it holds.

Used by `maskgen demo-data` and by the end-to-end `maskgen.demo.run.run_demo`.
"""

from __future__ import annotations

from pathlib import Path

from maskgen.demo.dataset import DemoConfig, DemoSummary, generate_demo_dataset
from maskgen.errors import MaskgenError


def build_demo_data(
    out: Path, subjects: int = 12, seed: int = 0, spacing: int = 2, overwrite: bool = False
) -> DemoSummary:
    """Generate (or reuse) the demo dataset with a progress bar and print its summary; returns the DemoSummary.
    Shared by `maskgen demo-data` and the end-to-end `maskgen demo`."""
    from maskgen.progress import Progress

    try:
        config = DemoConfig(subjects=subjects, seed=seed, spacing=spacing)
    except ValueError as e:
        raise MaskgenError(str(e)) from None
    with Progress("demo-data", subjects, unit="subject") as bar:
        summary = generate_demo_dataset(
            out, config, overwrite=overwrite, progress=lambda done, total: bar.update(done)
        )
    print_demo_summary(summary, [c.name for c in config.contrasts])
    return summary


def print_demo_summary(summary: DemoSummary, contrasts: list[str]) -> None:
    """Subjects, cases and domains per split, volume shapes and seconds (stdout, rich)."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    out = Console(soft_wrap=True)
    state = "up to date, reused (--overwrite regenerates it)" if summary.reused else "written"
    out.print(f"demo dataset {state}: [bold]{escape(str(summary.out_dir))}[/]", highlight=False)
    table = Table()
    for name, justify in (("split", "left"), ("subjects", "right"), ("cases", "right"), ("domains", "left")):
        table.add_column(name, justify=justify)
    for split in ("train", "val", "test"):
        records = [r for r in summary.records if r.split == split]
        domains = sorted({r.domain for r in records}, key=contrasts.index)
        table.add_row(split, str(summary.subjects_per_split.get(split, 0)), str(len(records)), ", ".join(domains))
    out.print(table)
    if summary.shapes:
        lo = [min(s[i] for s in summary.shapes) for i in range(3)]
        hi = [max(s[i] for s in summary.shapes) for i in range(3)]
        shape_text = " x ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in zip(lo, hi))
        out.print(f"volumes: {shape_text} voxels (x, y, z) at {summary.spacing} mm; "
                  f"{len(summary.records)} cases in {summary.seconds:.1f} s", highlight=False)
