"""CLI commands of the 'demo' stage (light module: heavy imports go inside command bodies)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from maskgen.cli._common import handle_errors, size_option, threads_option, use_threads

DEFAULT_DEMO_DIR = "cache/demo-data"


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""

    @app.command("demo-data")
    @handle_errors
    def demo_data(
        out: Path = typer.Option(Path(DEFAULT_DEMO_DIR), "--out", "-o", help="Folder to write (nnU-Net style)."),
        subjects: int = typer.Option(12, "--subjects", min=4, help="Number of subjects (>= 4): half train, "
                                     "a sixth val, the rest test."),
        seed: int = typer.Option(0, "--seed", min=0, help="Seed: the dataset is reproducible from it."),
        spacing: str = size_option("2", "--spacing", cubic=True, example="4", help="Voxel size N mm, isotropic, "
                                   "1..8 (2: volumes about 90^3; 4: a quick, coarse version)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Regenerate even if up to date, and replace a "
                                       "folder that is not a demo dataset."),
    ) -> None:
        """Build the offline demo dataset: MNI152 anatomy, 3 MR contrasts (train T1, test T2/FLAIR)."""
        import shlex

        from rich.console import Console

        from maskgen.demo.console import build_demo_data

        build_demo_data(out, subjects=subjects, seed=seed, spacing=spacing[0], overwrite=overwrite)
        same_as_default = out.resolve() == Path(DEFAULT_DEMO_DIR).resolve()
        root_arg = "" if same_as_default else f" --data-root {shlex.quote(str(out))}"
        Console(soft_wrap=True).print(f"next: maskgen verify --dataset demo{root_arg}", markup=False, highlight=False)

    @app.command("demo")
    @handle_errors
    def demo(
        quick: bool = typer.Option(False, "--quick", help="Smoke run: coarse 4 mm data, 6 subjects, a few dozen "
                                   "steps (under a minute on 2 CPU cores)."),
        out: Path = typer.Option(None, "--out", "-o", help="Folder of the two runs and the comparison "
                                 "(default runs/demo, or runs/demo-quick with --quick)."),
        steps: int = typer.Option(None, "--steps", min=1, help="Training steps per model (default 500; 60 with "
                                  "--quick)."),
        seeds: str = typer.Option("0", "--seeds", help="Comma-separated seeds; each trains both models."),
        mask_rate: Optional[float] = typer.Option(None, "--mask-rate", help="MaskGen view-masking rate (default "
                                                  "0.25: the best of the paper's 0.25 / 0.5 / 0.75 on the demo's "
                                                  "validation split; the paper's untuned rate is 0.5)."),
        extractor: str = typer.Option("auto", "--extractor", help="auto | anatomix | mind (auto: anatomix weights "
                                      "if found, else the best offline extractor)."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Rebuild data, store and runs from scratch."),
        threads: Optional[int] = threads_option(),
    ) -> None:
        """Run everything on the offline demo data: data, features, ERM vs MaskGen, evaluation on unseen contrasts."""
        import shutil
        import time

        from rich.console import Console
        from rich.markdown import Markdown

        from maskgen.demo.run import DemoSettings, run_demo
        from maskgen.errors import MaskgenError

        use_threads(threads)  # each stage re-applies it for its own workers (extract, train, evaluate)
        try:
            seed_list = tuple(int(s) for s in seeds.split(",") if s.strip())
        except ValueError:
            raise MaskgenError(f"--seeds {seeds!r} is not a comma-separated list of integers (e.g. 0,1).") from None
        changes: dict = {"seeds": seed_list, "extractor": extractor, "device": device}
        if mask_rate is not None:
            changes["mask_rate"] = mask_rate
        if steps is not None:
            changes["steps"] = steps
        if out is not None:
            changes["out"] = str(out)
        settings = DemoSettings.quick(**changes) if quick else DemoSettings(**changes)
        console = Console(soft_wrap=True, highlight=False)
        if overwrite and Path(settings.out).exists():
            shutil.rmtree(settings.out)
        t0 = time.perf_counter()
        try:
            result = run_demo(settings, overwrite=overwrite, log=lambda m: console.print(m, markup=False))
        except KeyboardInterrupt as e:
            raise KeyboardInterrupt(f"{str(e).split(':')[0] or 'Interrupted'}: run the same command again to continue "
                                    "(data, features and finished runs are reused; an unfinished run continues from "
                                    "its last.pt).") from None
        paths = result["results"]
        if not paths:
            raise MaskgenError(f"no evaluation results were written under {settings.out}.")
        console.print(Markdown(Path(paths["md"]).read_text()))
        console.print(f"ERM = 'Image only'; MaskGen = 'MR={round(settings.mask_rate * 100)}%'. "
                      f"t1 is the training contrast; t2 and flair were never seen in training.", markup=False)
        console.print(f"table: {paths['md']}\nplot:  {paths['png']}\nruns:  {settings.out}/\n"
                      f"total {time.perf_counter() - t0:.0f} s", markup=False)
