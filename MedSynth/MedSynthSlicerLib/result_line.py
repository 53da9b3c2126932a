"""The panel's one-line result: what changed, the method that ran, seconds, device and any warning (no Slicer)."""

from __future__ import annotations

from .panel_settings import format_slice_list
from .task_request import TaskOutcome

__all__ = ["summarize"]


def summarize(outcome: TaskOutcome) -> str:
    """The panel's result line: what changed, time, device, and any warning."""
    r = outcome.report
    device = r.get("device") or r.get("device_used") or "?"
    method = r.get("method", "?")
    task = outcome.request.task
    if task == "fill":
        slices = outcome.details.get("slices") or []
        what = f"Filled {len(slices)} slice(s)" + (f" ({format_slice_list(slices)})" if slices else "")
    elif task == "upsample":
        k, j, i = outcome.volume.array.shape
        what = f"Upsampled to {i}x{j}x{k} voxels ({len(outcome.details.get('slices', []))} new slices)"
    elif task == "lesion":
        sizes = outcome.details.get("lesion_ml", [])
        listed = ", ".join(f"{ml:.2f}" for ml in sizes)
        what = f"Inserted {len(sizes)} lesion(s): {listed} mL" if sizes else "No lesion voxels were written"
    else:
        what = f"Enhanced ({len(outcome.report.get('steps') or outcome.request.options.steps)} step(s))"
    line = f"{what} · {method} · {outcome.seconds:.1f} s · {device}"
    warnings = r.get("warnings") or []
    if warnings:
        line += f" · warning: {warnings[0]}" + (f" (+{len(warnings) - 1} more)" if len(warnings) > 1 else "")
    return line
