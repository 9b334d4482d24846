"""CLI commands of the 'evaluate' stage: `evaluate`, `predict`, `sweep` and `analyze sensitivity|robustness|stability`.

Light module: heavy imports (torch, monai, numpy, nibabel) happen inside command bodies.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import typer

from maskgen.cli._common import handle_errors, size_option
from maskgen.config import xyz_text

analyze_app = typer.Typer(
    name="analyze",
    help="Analyses of trained runs and stores: channel sensitivity, robustness to shifts, feature stability.",
    no_args_is_help=True,
    add_completion=False,
)


def _floats(text: str, flag: str) -> list[float]:
    from maskgen.errors import MaskgenError

    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MaskgenError(f"{flag} {text!r}: give comma-separated numbers, e.g. 0,0.25,0.5") from None


def _ints(text: str, flag: str) -> list[int]:
    from maskgen.errors import MaskgenError

    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise MaskgenError(f"{flag} {text!r}: give comma-separated integers, e.g. 0,1") from None


def _words(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _console() -> Any:
    from rich.console import Console

    return Console(highlight=False)


@contextmanager
def _progress(label: str, enabled: bool = True) -> Iterator[Callable[[int, int, str], None]]:
    """A rich progress bar fed by callbacks progress(done, total, what)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    bar = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[what]}"),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled, console=Console(stderr=True))
    task = bar.add_task(label, total=None, what="")

    def update(done: int, total: int, what: str) -> None:
        bar.update(task, completed=done, total=total, what=what)

    with bar:
        yield update


def _analysis_dir(run: Path, out: Optional[Path]) -> Path:
    return Path(out) if out is not None else Path(run) / "analysis"


# Options shared by several commands (one definition each, so their defaults and help cannot drift apart).
def _run_argument() -> Any:
    return typer.Argument(..., help="Run folder made by `maskgen train`.")


def _checkpoint_option() -> Any:
    return typer.Option("best", "--checkpoint", help="best (best validation Dice) | last.")


def _overlap_option() -> Any:
    return typer.Option(0.5, "--overlap", help="Sliding-window overlap in [0, 1) (Gaussian blending).")


def _device_option() -> Any:
    return typer.Option("auto", "--device", help="auto | cpu | cuda.")


def _empty_class_option() -> Any:
    return typer.Option("ignore", "--empty-class",
                        help="Dice of a class absent from the reference: ignore (not scored even if predicted; the "
                             "paper's code, MONAI) | zero (scored 0 if predicted; nnU-Net).")


def _quiet_option() -> Any:
    return typer.Option(False, "--quiet", help="No progress bar.")


def _out_option(help: str) -> Any:
    return typer.Option(None, "--out", "-o", help=help)


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""

    @app.command("evaluate")
    @handle_errors
    def evaluate(
        run: Path = _run_argument(),
        split: str = typer.Option("test", "--split", help="Store split to evaluate: train | val | test."),
        checkpoint: str = _checkpoint_option(),
        overlap: float = _overlap_option(),
        features: Optional[str] = typer.Option(None, "--features", help="The run's store, if it moved (default: the path recorded in the run); a folder or an fsspec URL."),
        empty_class: str = _empty_class_option(),
        metrics: str = typer.Option("dice", "--metrics", help="dice, plus hd95 (95th percentile Hausdorff distance, mm) and/or nsd (normalised surface Dice), e.g. dice,hd95,nsd."),
        nsd_tolerance: float = typer.Option(2.0, "--nsd-tolerance", help="NSD: boundary voxels within this distance (mm) count as correct."),
        device: str = _device_option(),
        quiet: bool = _quiet_option(),
    ) -> None:
        """Dice of a trained run on every case of a split: per case and class, mean (s.e.) per domain; also an
        nnU-Net-style summary-<split>.json (Dice, IoU, TP/FP/FN, optional HD95 and NSD)."""
        from maskgen.evaluate.evaluate import eval_paths, evaluate_run, summary_path, summary_table
        from maskgen.evaluate.report import rich_table
        from maskgen.evaluate.summary import distance_table, parse_metrics

        chosen = parse_metrics(metrics)
        with _progress(f"evaluate {run.name}", not quiet) as cb:
            result = evaluate_run(run, split, checkpoint, overlap, device, features, progress=cb,
                                  empty_class=empty_class, metrics=chosen, nsd_tolerance=nsd_tolerance)
        header, rows = summary_table(result)
        console = _console()
        console.print(rich_table(
            f"{run.name}: {split} split, {checkpoint}.pt (step {result.settings['step']}), Dice x100 mean (s.e.), "
            f"empty classes: {empty_class}",
            header, rows))
        distances = distance_table(result.scored, result.classes, chosen)
        if distances is not None:
            console.print(rich_table(f"{run.name}: {split} split, mean over cases"
                                     + (f" (NSD x100 at {nsd_tolerance:g} mm)" if "nsd" in chosen else ""), *distances))
        json_path, csv_path = eval_paths(run, split)
        console.print(f"wrote {json_path}, {csv_path} and {summary_path(run, split)}")

    @app.command("predict")
    @handle_errors
    def predict(
        run: Path = _run_argument(),
        input: Path = typer.Option(..., "--input", "-i", help="A NIfTI file or a folder of them (any domain)."),
        out: Path = typer.Option(..., "--out", "-o", help="Folder for the label maps (<name>.nii.gz, on each input's grid)."),
        checkpoint: str = _checkpoint_option(),
        overlap: float = _overlap_option(),
        weights: Optional[Path] = typer.Option(None, "--weights", help="Extractor weights file, if not where the store was made from (its sha256 must match)."),
        channel: Optional[int] = typer.Option(None, "--channel", help="Volume of a 4D input to segment (e.g. BraTS FLAIR = 0)."),
        domain: Optional[str] = typer.Option(None, "--domain", help="Imaging domain of the inputs (e.g. ct, mr): they are normalised by its rule in the run's pipeline, as its store's cases were (default: the rule of the run's training domains)."),
        save_probabilities: bool = typer.Option(False, "--save-probabilities", help="Also write the softmax on each input's grid (see --probabilities-format)."),
        probabilities_format: str = typer.Option("nifti", "--probabilities-format", help="nifti (<name>_probabilities.nii.gz, 4D x,y,z,class) | npz (<name>.npz, 'probabilities' class,z,y,x, as nnU-Net)."),
        device: str = _device_option(),
        quiet: bool = _quiet_option(),
    ) -> None:
        """Segment new NIfTI volumes with a trained run; label maps on each input's original grid, with its affine and
        sform/qform codes."""
        from maskgen.evaluate.predict import predict_files, raise_failures

        notes: list[str] = []
        with _progress("predict", not quiet) as cb:
            results = predict_files(run, input, out, checkpoint, overlap, device, weights, channel, progress=cb,
                                    save_probabilities=probabilities_format if save_probabilities else None,
                                    domain=domain, log=notes.append)
        console = _console()
        for note in notes:
            console.print(note, markup=False, soft_wrap=True)
        ok = [r for r in results if r.error is None]
        for r in ok:
            console.print(f"{r.input} -> {r.output}" + (f", {r.probabilities}" if r.probabilities else ""))
        raise_failures(results)
        console.print(f"wrote {len(ok)} label map(s) to {out}")

    @app.command("sweep")
    @handle_errors(fields={"crop_zyx": ("crop_size", xyz_text)})
    def sweep(
        features: str = typer.Option(..., "--features", help="Feature store made by `maskgen extract` (never re-extracted): a folder or an fsspec URL."),
        out: Path = typer.Option(..., "--out", "-o", help="Sweep folder: one run folder per variant, results.{csv,md,png}."),
        mask_rate: str = typer.Option("0,0.25,0.5,0.75", "--mask-rate", help="View masking rates for --inputs both."),
        inputs: str = typer.Option("image,features,both", "--inputs", help="Input modes: image (ERM), features (reps. only), both; image and features are trained at rate 0 only."),
        seeds: str = typer.Option("0", "--seeds", help="Seeds, e.g. 0,1."),
        method: str = typer.Option("maskgen", "--method", help="maskgen and/or channel-dropout (paper Table 5 baseline)."),
        dropout_rate: Optional[str] = typer.Option(None, "--dropout-rate", help="Channel-dropout rates (default: the non-zero --mask-rate values)."),
        splits: str = typer.Option("val,test", "--splits", help="Splits each variant is evaluated on."),
        checkpoint: str = _checkpoint_option(),
        overlap: float = _overlap_option(),
        steps: Optional[int] = typer.Option(None, "--steps", help="Training steps per variant (default: maskgen train's)."),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Crops per step."),
        channels: Optional[int] = typer.Option(None, "--channels", help="UNet base width."),
        depth: Optional[int] = typer.Option(None, "--depth", help="UNet max-pool levels."),
        unet: Optional[str] = typer.Option(None, "--unet", help="UNet: public (default) | table15."),
        crop_size: Optional[str] = size_option(None, "--crop-size", help="Training crop in voxels, N (cubic) or X,Y,Z (x,y,z order) (default: the pipeline's)."),
        val_every: Optional[int] = typer.Option(None, "--val-every", help="Validate every N steps (0: at the end)."),
        lr: Optional[float] = typer.Option(None, "--lr", help="AdamW learning rate."),
        feature_norm: Optional[str] = typer.Option(None, "--feature-norm", help="crop | volume."),
        aug_prob: Optional[float] = typer.Option(None, "--aug-prob", help="Probability of each augmentation."),
        fg_fraction: Optional[float] = typer.Option(None, "--fg-fraction", help="Fraction of foreground-centred crops."),
        n_train: Optional[int] = typer.Option(None, "--n-train", help="Few-shot: K train cases."),
        num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Loader worker processes."),
        device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda."),
        empty_class: str = _empty_class_option(),
        scheduler: Optional[str] = typer.Option(None, "--scheduler", help="Run the variants as tasks on a dask.distributed cluster (e.g. tcp://host:8786); each asks for one GPU where workers declare --resources GPU=1."),
        quiet: bool = _quiet_option(),
    ) -> None:
        """Train and evaluate a grid of variants (mask rates, inputs, seeds, baselines) from one store; resumable."""
        from maskgen.evaluate.report import rich_table
        from maskgen.evaluate.sweep import plan_variants, run_sweep
        from maskgen.evaluate.sweep_results import collect_results, results_markdown_rows

        variants, notes = plan_variants(
            _floats(mask_rate, "--mask-rate"), _words(inputs), _ints(seeds, "--seeds"), _words(method),
            None if dropout_rate is None else _floats(dropout_rate, "--dropout-rate"),
        )
        given = {"steps": steps, "batch_size": batch_size, "channels": channels, "depth": depth, "unet": unet,
                 "val_every": val_every, "lr": lr, "feature_norm": feature_norm, "aug_prob": aug_prob,
                 "fg_fraction": fg_fraction, "n_train": n_train, "num_workers": num_workers, "device": device,
                 "crop_zyx": crop_size}
        options = {k: v for k, v in given.items() if v is not None}
        console = _console()
        for note in notes:
            console.print(f"[yellow]note:[/] {note}")
        console.print(f"sweep {out}: {len(variants)} variants: {', '.join(v.name for v in variants)}")
        split_list = _words(splits)
        run_sweep(features, out, variants, options, split_list, checkpoint, overlap, progress=not quiet,
                  log=console.print, empty_class=empty_class, scheduler=scheduler)
        header, rows = results_markdown_rows(collect_results(out, variants, split_list))
        console.print(rich_table(f"sweep {out.name}: Dice x100, mean (s.e.)", header, rows))
        console.print(f"wrote {out / 'results.csv'}, {out / 'results.md'}, {out / 'results.png'}")

    @analyze_app.command("sensitivity")
    @handle_errors
    def sensitivity(
        run: Path = _run_argument(),
        split: str = typer.Option("val", "--split", help="Split to measure on (the paper: validation)."),
        checkpoint: str = _checkpoint_option(),
        overlap: float = _overlap_option(),
        out: Optional[Path] = _out_option("Output folder (default: RUN/analysis)."),
        empty_class: str = _empty_class_option(),
        device: str = _device_option(),
        quiet: bool = _quiet_option(),
    ) -> None:
        """One-channel removal: Dice change when each input channel alone is zeroed (paper Figure 4, bottom)."""
        from maskgen.evaluate.report import rich_table
        from maskgen.evaluate.sensitivity import channel_sensitivity, sensitivity_table, write_sensitivity

        with _progress(f"sensitivity {run.name}", not quiet) as cb:
            result = channel_sensitivity(run, split, checkpoint, overlap, device, progress=cb, empty_class=empty_class)
        paths = write_sensitivity(result, _analysis_dir(run, out), title=f"{run.name}: one-channel removal ({split})")
        header, rows = sensitivity_table(result)
        console = _console()
        console.print(rich_table(f"{run.name}: full input Dice {result.full.format()}; Delta x100 when zeroed",
                                 header, rows))
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")

    @analyze_app.command("robustness")
    @handle_errors
    def robustness(
        runs: list[Path] = typer.Argument(..., help="One or more run folders (e.g. ERM and MaskGen), compared side by side."),
        split: str = typer.Option("test", "--split", help="Split to corrupt."),
        checkpoint: str = _checkpoint_option(),
        bias_levels: str = typer.Option("0,0.1,0.2,0.3,0.4,0.5", "--bias-levels", help="Bias-field coefficient ranges (0 = none); empty to skip."),
        gamma_levels: str = typer.Option("0.25,0.5,0.75,1,1.5,2,3", "--gamma-levels", help="Gamma values (1 = none); empty to skip."),
        draws: int = typer.Option(3, "--draws", help="Random bias fields per level (the paper: 3)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the random bias fields."),
        max_cases: Optional[int] = typer.Option(None, "--max-cases", help="Use only the first N cases of the split."),
        overlap: float = _overlap_option(),
        weights: Optional[Path] = typer.Option(None, "--weights", help="Extractor weights, if not where the store was made from."),
        out: Optional[Path] = _out_option("Output folder (default: FIRST_RUN/analysis)."),
        empty_class: str = _empty_class_option(),
        device: str = _device_option(),
        quiet: bool = _quiet_option(),
    ) -> None:
        """Dice under simulated bias-field and gamma shifts of increasing strength (paper Appendix B.7)."""
        from maskgen.evaluate.report import rich_table
        from maskgen.evaluate.robustness import robustness_analysis, robustness_table, write_robustness

        with _progress("robustness", not quiet) as cb:
            result = robustness_analysis(
                runs, split, checkpoint, _floats(bias_levels, "--bias-levels"), _floats(gamma_levels, "--gamma-levels"),
                draws, seed, overlap, device, weights, max_cases, progress=cb, empty_class=empty_class,
            )
        paths = write_robustness(result, _analysis_dir(runs[0], out))
        console = _console()
        for shift in result.levels:
            header, rows = robustness_table(result, shift)
            console.print(rich_table(f"{shift}: Dice x100 mean (s.e.), {len(result.case_ids)} {split} cases",
                                     header, rows))
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")

    @analyze_app.command("stability")
    @handle_errors
    def stability(
        store: str = typer.Argument(..., help="Feature store made by `maskgen extract` (a folder or an fsspec URL)."),
        region: str = typer.Option("foreground", "--region", help="Voxels compared: foreground (labelled anatomy of either case) | all."),
        max_voxels: int = typer.Option(200_000, "--max-voxels", help="Voxels sampled per pair (fixed seed)."),
        out: Optional[Path] = _out_option("Output folder (default: <store>-stability next to the store; in the current folder for a remote store)."),
        quiet: bool = _quiet_option(),
    ) -> None:
        """Per-channel linear CKA and cosine similarity between domains of the same subjects (paper Appendix B.1)."""
        from maskgen.evaluate.report import rich_table
        from maskgen.evaluate.stability import stability_analysis, stability_table, write_stability

        from maskgen.store.location import local_path, name_of

        name = name_of(store)
        name = name[: -len(".zarr")] if name.endswith(".zarr") else name
        folder = local_path(store)
        out_dir = out if out is not None else (folder.parent if folder is not None else Path(".")) / f"{name}-stability"
        with _progress("stability", not quiet) as cb:
            result = stability_analysis(store, region, max_voxels, progress=lambda d, t: cb(d, t, ""))
        paths = write_stability(result, out_dir, title=name)
        console = _console()
        for note in result.notes:
            console.print(f"[yellow]note:[/] {note}")
        for metric in ("cka", "cosine"):
            header, rows = stability_table(result, metric)
            console.print(rich_table(f"{name}: {metric}, mean (s.e.) over subjects", header, rows))
        console.print(f"wrote {', '.join(str(p) for p in paths.values())}")

    app.add_typer(analyze_app, name="analyze")
