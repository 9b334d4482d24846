"""CLI commands of the 'pretrain' stage (light module: heavy imports go inside command bodies)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from maskgen.cli._common import handle_errors, size_option, threads_option, use_threads


def register(app: typer.Typer) -> None:
    """Add this stage's commands to the main app."""

    @app.command("pretrain")
    @handle_errors
    def pretrain_command(
        out: Path = typer.Option(..., "--out", help="Weights file to write (e.g. weights.pt); the resumable "
                                 "state, metrics.jsonl and progress.png go to '<out>.state/'."),
        steps: int = typer.Option(2000, "--steps", min=1, help="Total optimisation steps."),
        crop_size: str = size_option("32", "--crop-size", cubic=True, example="32", help="Size of the cubic "
                                     "synthetic volumes, N voxels (a multiple of 2**num-downs)."),
        batch_size: int = typer.Option(2, "--batch-size", min=1, help="Label maps per step (each rendered twice)."),
        ngf: int = typer.Option(8, "--ngf", min=1, help="UNet base width (anatomix: 16)."),
        num_downs: int = typer.Option(3, "--num-downs", min=1, help="UNet downsamplings (anatomix: 4)."),
        out_channels: int = typer.Option(16, "--out-channels", min=2, help="Feature channels (anatomix: 16)."),
        lr: float = typer.Option(1e-3, "--lr", help="Peak learning rate (AdamW; warm-up then cosine)."),
        min_lr: float = typer.Option(1e-5, "--min-lr", help="Learning rate at the last step."),
        warmup_steps: int = typer.Option(100, "--warmup-steps", min=0, help="Linear warm-up steps."),
        temperature: float = typer.Option(0.1, "--temperature", help="Temperature of the contrastive loss."),
        voxels: int = typer.Option(256, "--voxels", min=2, help="Voxels sampled per volume and step for the loss."),
        loss: str = typer.Option("voxel", "--loss", help="Contrastive mode: 'voxel' (positive: the same voxel in "
                                 "the other view; negatives: other labels), 'cross_view' (positives: every voxel "
                                 "of the label in the other view) or 'supcon' (both views pooled)."),
        input_: str = typer.Option("image", "--input", help="What the network sees: 'image' (anatomix) or "
                                   "'mind-ssc' (the image's MIND-SSC descriptor, computed inside the network, so "
                                   "the weights file still maps an image to features)."),
        append_input: bool = typer.Option(False, "--append-input", help="With --input mind-ssc: the features are "
                                          "the UNet's output channels followed by the descriptor itself (the "
                                          "contrastive loss sees both)."),
        seed: int = typer.Option(0, "--seed", help="Seed of the initialisation, the data and the voxel samples."),
        label_dir: Optional[Path] = typer.Option(None, "--label-dir", help="Folder of NIfTI label maps to mix in "
                                                 "with the synthetic ensembles (optional)."),
        synth: list[str] = typer.Option([], "--synth", help="Synthesis setting KEY=VALUE (repeatable; pairs as "
                                        "LO,HI), a field of maskgen.pretrain.config.SynthConfig, e.g. "
                                        "nested_fraction=0.4."),
        device: str = typer.Option("auto", "--device", help="auto | cpu | cuda (bf16 autocast for the network; "
                                   "the loss in float32). The CPU path is the exact float32 one."),
        num_workers: Optional[int] = typer.Option(None, "--num-workers", min=0, help="Processes that synthesise the "
                                                  "next batches (default: 0 on the CPU, up to 8 with cuda); the "
                                                  "result does not depend on it."),
        checkpoint_every: int = typer.Option(50, "--checkpoint-every", min=1, help="Steps between checkpoints."),
        resume: bool = typer.Option(False, "--resume", help="Continue the run saved in '<out>.state/'."),
        stop_after: Optional[int] = typer.Option(None, "--stop-after", min=1, help="Stop this invocation after "
                                                 "that many steps (resume later with --resume)."),
        quiet: bool = typer.Option(False, "--quiet", help="No progress bar or progress lines."),
        log_interval: Optional[float] = typer.Option(None, "--log-interval", help="Seconds between progress lines "
                                                     "when stderr/stdout is not a terminal; default "
                                                     "$MASKGEN_LOG_INTERVAL or 30."),
        threads: Optional[int] = threads_option(),
    ) -> None:
        """Pretrain an anatomix-style feature extractor on synthetic label ensembles (contrastive)."""
        from rich.console import Console

        from maskgen.errors import MaskgenError
        from maskgen.pretrain.config import PretrainConfig, synth_from_overrides
        from maskgen.pretrain.loop import pretrain

        use_threads(threads)  # re-applied for the synthesis workers when they start (maskgen.pretrain.loop)
        try:
            cfg = PretrainConfig(
                out=out, steps=steps, crop_size=crop_size[0], batch_size=batch_size, ngf=ngf, num_downs=num_downs,
                out_channels=out_channels, lr=lr, min_lr=min_lr, warmup_steps=warmup_steps, temperature=temperature,
                voxels_per_volume=voxels, loss=loss, input=input_, append_input=append_input, seed=seed,
                label_dir=label_dir, checkpoint_every=checkpoint_every,
                synth=synth_from_overrides(synth), device=device, num_workers=num_workers,
            )
        except ValueError as e:
            raise MaskgenError(f"invalid pretrain settings: {e}") from None
        result = pretrain(cfg, resume=resume, stop_after=stop_after, show_progress=not quiet, log_interval=log_interval)
        console = Console(stderr=True, highlight=False)
        if result == cfg.out:
            console.print(f"Wrote {result} (load it with --extractor anatomix --weights {result}); "
                          f"metrics and progress.png in {cfg.state_dir}")
        else:
            console.print(f"Stopped before step {cfg.steps}; state in {cfg.state_dir}. Continue with --resume.")
