"""``medsynth demo``: run every task on the embedded samples, write outputs, a report and QC pictures.

A task joins the demo by giving its CLI module (listed in ``COMMANDS``) a
``demo_step(samples, out_dir, progress) -> DemoOutcome`` function, so the demo
always runs exactly the tasks that exist.
"""

from __future__ import annotations

import argparse
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from .._version import __version__
from ..progress import ProgressCallback, subrange
from ..qc import save_qc_png
from ..sample_data import SAMPLES, load_sample, sample_path
from ..volume import Volume, validate_volume
from .common import print_warnings, progress_bar, write_json
from .info import describe_volume

__all__ = ["DemoOutcome", "run_demo"]


@dataclass
class DemoOutcome:
    """What one task's demo step did, for the report and the QC picture."""

    task: str
    sample: str
    before: Volume
    after: Volume
    outputs: list[Path] = field(default_factory=list)
    summary: dict = field(default_factory=dict)
    qc_axis: Optional[int] = None
    #: Further keyword arguments of :func:`MedSynthLib.qc.qc_picture` (``slices``, ``region``, ``title``).
    qc_options: dict = field(default_factory=dict)


DemoStep = Callable[[dict, Path, Optional[ProgressCallback]], DemoOutcome]


def demo_steps() -> list[tuple[str, DemoStep]]:
    """(command, step) for every registered CLI module that defines ``demo_step``."""
    from . import COMMANDS

    steps = []
    for name in COMMANDS:
        module = importlib.import_module(f"{__package__}.{name}")
        step = getattr(module, "demo_step", None)
        if step is not None:
            steps.append((name, step))
    return steps


def run_demo(out_dir: Path, *, progress: Optional[ProgressCallback] = None, only: Optional[list[str]] = None) -> dict:
    """Run the demo into ``out_dir``; returns the report (also written to ``report.json``)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    samples = {name: load_sample(name) for name in SAMPLES}
    for volume in samples.values():
        validate_volume(volume)
    steps = [(n, s) for n, s in demo_steps() if only is None or n in only]
    report: dict = {
        "medsynth_version": __version__,
        "device": _device(),
        "samples": {name: {"file": str(sample_path(name)), **describe_volume(v)} for name, v in samples.items()},
        "steps": [],
    }
    if not steps:
        report["note"] = "no task is installed yet; the samples were read and checked"
    for number, (name, step) in enumerate(steps):
        start = time.perf_counter()
        outcome = step(samples, out_dir, subrange(progress, number / len(steps), (number + 1) / len(steps)))
        qc = save_qc_png(outcome.before, outcome.after, out_dir / f"qc_{outcome.task}.png", axis=outcome.qc_axis,
                         **outcome.qc_options)
        report["steps"].append(
            {
                "task": outcome.task,
                "sample": outcome.sample,
                "seconds": round(time.perf_counter() - start, 2),
                "outputs": [str(p) for p in outcome.outputs],
                "qc_picture": str(qc),
                "qc_title": outcome.qc_options.get("title", ""),
                "report": outcome.summary,
            }
        )
    write_json(report, out_dir / "report.json")
    return report


def _run(args: argparse.Namespace) -> int:
    out_dir = Path(args.out)
    with progress_bar(args.quiet, "demo") as progress:
        report = run_demo(out_dir, progress=progress, only=args.only)
    print_warnings(report)  # every step's warnings, e.g. "medsynth: warning: enhance/denoise: ..."
    if not args.quiet:
        for step in report["steps"]:
            print(f"{step['task']:<10} {step['sample']:<9} {step['seconds']:>7.1f} s  QC: {step['qc_picture']}")
        if "note" in report:
            print(report["note"])
        print(f"report: {out_dir / 'report.json'}")
    return 0


def _device() -> str:
    from ..engine import describe_device, select_device  # torch: imported when the demo runs, not with the parser

    return describe_device(select_device("auto"))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("demo", help="run every task on the embedded sample volumes")
    parser.add_argument("--out", default="medsynth_demo", metavar="DIR", help="output folder (default: %(default)s)")
    parser.add_argument("--only", action="append", metavar="TASK", help="run only this task's step (repeatable)")
    parser.set_defaults(func=_run)
