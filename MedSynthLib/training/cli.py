"""``medsynth-train``: train a MedSynth model from volumes on disk and write a model package.

Exit codes: 0 success, 1 internal failure, 2 bad input or usage (one line on
stderr), 130 interrupted (a checkpoint was written; rerun with ``--resume``).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from typing import Optional, Sequence

from .._version import __version__
from ..cli.common import EXIT_OK, number_in, positive_int, run_reporting_errors
from ..errors import InputError

__all__ = ["main", "build_parser"]


def _pairs_text() -> str:
    from .families import valid_pairs

    lines = [f"  {task:<15} {', '.join(families)}" for task, families in valid_pairs().items()]
    return "valid task x family pairs (the first family is the default):\n" + "\n".join(lines)




def build_parser() -> argparse.ArgumentParser:
    from .families import FAMILIES
    from .pairs import PAIR_MAKERS

    parser = argparse.ArgumentParser(
        prog="medsynth-train",
        description="Train a MedSynth model (fill, denoise, lesion shapes, lesion inpainting) on your own "
        "volumes and write a model package (NAME.json + NAME.safetensors) that MedSynth loads. "
        "For several GPUs or nodes: torchrun --nproc_per_node N -m MedSynthLib.training ...",
        epilog=_pairs_text(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("task", choices=list(PAIR_MAKERS), help="what the model does")
    parser.add_argument("--data", action="append", metavar="DIR_OR_GLOB",
                        help="folder or glob of NRRD/NIfTI/MHA volumes (repeatable)")
    parser.add_argument("--labels", action="append", metavar="DIR_OR_GLOB",
                        help="label maps, one per image, paired in sorted order (lesion tasks)")
    parser.add_argument("--out", metavar="DIR", help="run folder: checkpoints, logs and the final package")
    parser.add_argument("--family", choices=list(FAMILIES), help="model family (default: the task's first, see below)")
    parser.add_argument("--config", metavar="FILE", help="YAML config; command-line options override it")
    parser.add_argument("--epochs", type=positive_int, help="epochs (default 10)")
    parser.add_argument("--batch-size", type=positive_int, help="samples per step and process (default 8)")
    parser.add_argument("--samples-per-epoch", type=positive_int, help="random crops per epoch (default 512)")
    parser.add_argument("--crop", type=positive_int, help="crop size in voxels (default 64)")
    parser.add_argument("--lr", type=float, help="learning rate (default 2e-4, cosine decay)")
    parser.add_argument("--device", help="auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps (default auto)")
    parser.add_argument("--amp", action="store_true", default=None, help="mixed precision: float16 on CUDA, bfloat16 on a CPU that computes it natively (AVX512-BF16/AMX)")
    parser.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoint_last.pt")
    parser.add_argument("--seed", type=int, help="random seed (default 0)")
    parser.add_argument("--val-fraction", type=number_in(0.0, 1.0, include_high=False), help="share of volumes held out for validation (default 0.2)")
    parser.add_argument("--workers", type=int, dest="num_workers", help="DataLoader worker processes (default 0)")
    parser.add_argument("--augment", type=float, help="intensity augmentation strength: 0 off, 1 default, 2 heavy")
    parser.add_argument("--name", help="package name (default TASK_FAMILY)")
    parser.add_argument("--threads", type=positive_int, help="CPU threads for torch")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar, warnings only")
    parser.add_argument("--debug", action="store_true", help="full tracebacks on failure")
    return parser


def _config_from_args(args: argparse.Namespace):
    from .config import TrainConfig, load_config

    overrides = {
        "task": args.task,
        "data": args.data,
        "labels": args.labels,
        "out": args.out,
        "family": args.family,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "samples_per_epoch": args.samples_per_epoch,
        "crop": args.crop,
        "lr": args.lr,
        "device": args.device,
        "amp": args.amp,
        "seed": args.seed,
        "val_fraction": args.val_fraction,
        "num_workers": args.num_workers,
        "augment": args.augment,
        "name": args.name,
        "threads": args.threads,
    }
    if args.config:
        config = load_config(args.config, overrides=overrides)
        if config.task != args.task:
            raise InputError(f"config {args.config} is for task {config.task!r}, the command line says {args.task!r}")
        return config
    return TrainConfig.from_mapping({k: v for k, v in overrides.items() if v is not None}, source="command line")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Console entry point ``medsynth-train``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO,
        format="medsynth-train: %(levelname)s: %(message)s",
    )
    command = "medsynth-train " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))

    def run() -> int:
        from .trainer import train

        config = _config_from_args(args)
        result = train(config, resume=args.resume, quiet=args.quiet, command=command)
        if result.package is not None:
            best = ", ".join(f"{k}={v:.4g}" for k, v in result.best.items() if isinstance(v, float))
            print(f"wrote {result.package} (best: {best or 'n/a'})")
        return EXIT_OK

    return run_reporting_errors(
        run, prog="medsynth-train", debug=args.debug, cancelled_message=lambda error: str(error) or "interrupted"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
