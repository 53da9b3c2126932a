"""The options of :func:`denoise`, :func:`correct_bias` and :func:`enhance`: every knob, its default, range and choices.

Torch-free on purpose: the Slicer panel and the CLI read the method list and ranges from here before the heavy
libraries load (``from MedSynthLib.tasks.enhance import DenoiseOptions`` imports only this module). The pipeline's
steps are options too: :class:`EnhanceStep` is one step with its options checked where it is made, and
:func:`parse_steps` reads the ``bias,denoise:nlm,upsample:2`` grammar the CLI and the panel share.

Ranges are the library's: ``strength`` 0-2 (0 returns the input unchanged) and ``shrink`` 1-16 (1 fits at full
resolution); a front end may offer less, never more.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence, Union

from ...errors import InputError, check_whole_number
from ...options import TaskOptions, budget_knob, device_knob, knob, seed_knob
from ..fill import UpsampleOptions

__all__ = ["DENOISE_METHODS", "MODALITIES", "LOCAL_NOISE", "BIAS_OUTPUT_DTYPES", "METHOD_OPTIONS", "DenoiseOptions", "BiasOptions",
           "EnhanceStep", "EnhanceOptions", "parse_steps", "default_budget_seconds", "DEFAULT_BUDGET"]

#: Denoise methods; ``auto`` picks among the others (and falls back to safer ones), the report says which.
DENOISE_METHODS = ("auto", "fusion", "dct", "selfsup", "model", "nlm", "aniso")
#: Modalities as the noise model sees them: MR magnitude (Rician), CT (Gaussian).
MODALITIES = ("MR", "CT")
#: Whether ``denoise`` follows the local noise map (:mod:`MedSynthLib.noise_map`): ``auto`` where it varies.
LOCAL_NOISE = ("auto", "off")
#: The corrected volume's voxel type (:class:`BiasOptions` ``output_dtype``): never clipped to the input's range.
BIAS_OUTPUT_DTYPES = ("auto", "input", "float32")
#: What ``method_options`` may hold, per method (the grammar of ``fill_slices``'s ``method_options``).
METHOD_OPTIONS = {"selfsup": ("steps",)}

_METHOD_HELP = ("auto (a model package if given, else selfsup on a GPU and fusion on a CPU; falls back to a safer "
                "method when a result is implausible), fusion (training-free: block matching, sliding DCT and "
                "non-local means, SURE-weighted), dct (the fastest strong method), selfsup (fusion plus a network "
                "trained on this volume), model (a trained package), nlm or aniso (the classical ones)")
#: The default time budget of each task when none is given: (seconds, seconds per million voxels), as fill's
#: grows with its slices; denoise's by noise model. ``denoise`` (applies to ``auto``; an explicit method runs
#: unbudgeted, reproducibly): about what ANTs' ``denoise_image`` takes with the same noise model on one core,
#: so the default stays within twice its time. Measured on one loaded core (2026-12-07, whole scans): ANTs 4-5
#: CPU-us a voxel on CT (Gaussian), 37-40 on MR (Rician); ours: the fusion's probes 12-42 s, the sliding DCT
#: 3-4 us a voxel, the collaborative filter 10-15 us (19 on lung1's 2 x 6 x 6 blocks), non-local means 5-9 us.
#: On CT the collaborative filter is left out of whole scans (lung1 131 s, chest-abdomen 89 s: the DCT); on MR it
#: fits (ROBEX 114 s). ``bias``: N4 on the shrunk image takes a few seconds; the budget only matters on very
#: large volumes or a very busy machine, where the fit moves to a coarser shrink.
DEFAULT_BUDGET = {("denoise", "gaussian"): (30.0, 8.0), ("denoise", "rician"): (60.0, 20.0), ("bias", None): (30.0, 2.0)}


def default_budget_seconds(task: str, voxels: int, *, noise_model: Optional[str] = None) -> float:
    """The default wall-clock budget of ``task`` (``denoise`` or ``bias``) on a volume of ``voxels`` voxels;
    ``noise_model`` (``gaussian``: CT, ``rician``: MR magnitude) for ``denoise``.

    Examples
    --------
    >>> default_budget_seconds("denoise", 12_582_912, noise_model="gaussian")  # the whole lung1 CT, 512 x 512 x 48
    130.7
    >>> default_budget_seconds("denoise", 2_697_000, noise_model="rician")  # the 1.5 mm ROBEX head
    113.9
    """
    if task == "denoise" and noise_model not in ("gaussian", "rician"):
        raise ValueError(f"denoise's default budget needs noise_model 'gaussian' or 'rician', got {noise_model!r}")
    base, per_million = DEFAULT_BUDGET[(task, noise_model if task == "denoise" else None)]
    return round(base + per_million * voxels / 1e6, 1)


#: The knobs a pipeline sets for each of its steps (from :class:`EnhanceOptions`), not a step's own.
_PIPELINE_KNOBS = ("model", "device", "seed", "time_budget")


@dataclass(frozen=True)
class DenoiseOptions(TaskOptions):
    """Options of :func:`~MedSynthLib.tasks.enhance.denoise` (the ``mask`` is data: a separate argument).

    Examples
    --------
    >>> DenoiseOptions(method="NLM", strength=0.5, modality="mr")
    DenoiseOptions(method='nlm', strength=0.5, modality='MR', device='auto', seed=0, time_budget=None, threads=None, batch_size=16, local_noise='auto', coils=None, model=None, method_options=None)
    >>> DenoiseOptions.knob("strength").high
    2.0
    """

    method: str = knob("auto", choices=DENOISE_METHODS, help=_METHOD_HELP)
    strength: float = knob(1.0, low=0.0, high=2.0,
                           help="1 is the method's calibrated setting (from the noise estimate), 0 returns the volume "
                                "unchanged, above 1 removes more")
    modality: Optional[str] = knob(None, choices=MODALITIES, optional=True,
                                   help="override the modality guess (MR: Rician noise, CT: Gaussian)")
    device: str = device_knob()
    seed: int = seed_knob("seed of the self-supervised training and the fusion's probes; CPU runs are deterministic "
                          "for a seed")
    time_budget: Optional[float] = budget_knob("seconds of wall time, checked on the clock: the fusion computes on "
                                               "the whole volume only the components that fit it (measured on its "
                                               "probes) and the self-supervised training stops early (the report's "
                                               "time_budget says what was cut); unset: for auto about ANTs' "
                                               "time (CT 30 s + 8 s, MR 60 s + 20 s per million voxels), no limit "
                                               "for a named method", low_open=True)
    threads: Optional[int] = knob(None, low=1, high=4096, optional=True,
                                  help="torch CPU threads; unset: the cores idle now (threads fighting another job "
                                       "for busy cores run several times slower than one)")
    batch_size: int = knob(16, low=1, high=4096, help="slices per batch of the model method (halved when out of memory)")
    local_noise: str = knob("auto", choices=LOCAL_NOISE, help="auto: where the local noise map varies (95th over 5th "
                            "percentile in the tissue above 1.5) the volume is divided by the map's shape, denoised "
                            "and multiplied back, so every method sees even noise; off: one sigma everywhere")
    coils: Optional[float] = knob(None, low=1.0, high=64.0, optional=True,
                                  help="MR magnitude noise model: the effective receive-coil count of a sum-of-squares "
                                       "reconstruction (non-central chi with 2N degrees of freedom); 1: Rician; unset: "
                                       "estimated from the air's distribution (Rician where the air says so or there "
                                       "is none)")
    #: A denoise model package (path, installed name or loaded package); None: the bundled one for ``model``.
    model: Any = None
    #: Per-method settings keyed by method name: ``{"selfsup": {"steps": N}}`` (training length).
    method_options: Optional[dict] = None

    def _check(self) -> None:
        if self.modality is not None:
            object.__setattr__(self, "modality", self.modality.upper())
        options = self.method_options
        if options is None:
            return
        if not isinstance(options, dict):
            raise InputError(f"method_options must be a dict keyed by method name, got {options!r}")
        unknown = sorted(set(options) - set(METHOD_OPTIONS))
        if unknown:
            raise InputError(f"method_options for denoise take {', '.join(METHOD_OPTIONS)}, got {', '.join(unknown)}")
        selfsup = dict(options.get("selfsup") or {})
        bad = sorted(set(selfsup) - set(METHOD_OPTIONS["selfsup"]))
        if bad:
            raise InputError(f"denoise selfsup options are {', '.join(METHOD_OPTIONS['selfsup'])}, got {', '.join(bad)}")
        if selfsup.get("steps") is not None:
            check_whole_number(selfsup["steps"], "selfsup steps", low=1, high=10**6)

    @property
    def selfsup_steps(self) -> Optional[int]:
        """The self-supervised training length asked for in ``method_options`` (None: the method's default)."""
        steps = dict((self.method_options or {}).get("selfsup") or {}).get("steps")
        return None if steps is None else int(steps)


@dataclass(frozen=True)
class BiasOptions(TaskOptions):
    """Options of :func:`~MedSynthLib.tasks.enhance.correct_bias` (N4; the ``mask`` is a separate argument).

    Examples
    --------
    >>> BiasOptions(shrink=4, iterations=[30, 30])
    BiasOptions(shrink=4, control_points=4, iterations=(30, 30), time_budget=None, output_dtype='auto')
    """

    shrink: int = knob(6, low=1, high=16,
                       help="fit on an image shrunk this many times per axis (an axis keeps at least 8 voxels); "
                            "1 fits at full resolution (slow); the field is always applied at full resolution")
    control_points: int = knob(4, low=4, help="B-spline control points per axis at the coarsest fitting level")
    iterations: tuple[int, ...] = knob((40, 40, 40), help="maximum iterations per fitting level, one entry per "
                                       "level (three levels: on the MNI benchmark a fourth began to fit anatomy)")
    time_budget: Optional[float] = budget_knob("seconds of wall time, checked on the clock while N4 iterates: "
                                               "when the fit would take longer it restarts on a coarser shrink "
                                               "(the report's time_budget says so); unset: 30 s + 2 s per million "
                                               "voxels", low_open=True)
    output_dtype: str = knob("auto", choices=BIAS_OUTPUT_DTYPES,
                             help="voxel type of the corrected volume, never clipped: auto keeps the input's type "
                                  "when the corrected intensities fit it and writes float32 when they do not (a "
                                  "uint8 scan corrected above 255); input keeps it always, rescaling the volume "
                                  "into its range when needed; float32 always")

    def _check(self) -> None:
        try:
            values = tuple(self.iterations)
            good = bool(values) and all(int(i) == i and i >= 1 and not isinstance(i, bool) for i in values)
        except (TypeError, ValueError):
            good = False
        if not good:
            raise InputError(f"iterations must be a list of positive integers (one per level), got {self.iterations!r}")
        object.__setattr__(self, "iterations", tuple(int(i) for i in values))


#: Step names of the grammar and what they run (``n4`` and ``superres`` read as ``bias`` and ``upsample``).
STEP_NAMES = {"bias": "bias", "n4": "bias", "denoise": "denoise", "upsample": "upsample", "superres": "upsample"}
#: Each step's options class: a step takes its knobs except those the pipeline sets for every step.
_STEP_OPTIONS = {"bias": BiasOptions, "denoise": DenoiseOptions, "upsample": UpsampleOptions}


@dataclass(frozen=True)
class EnhanceStep:
    """One pipeline step: ``name`` is ``bias``, ``denoise`` or ``upsample``; ``options`` its own knobs.

    The options are those of :class:`BiasOptions`, :class:`DenoiseOptions` or
    :class:`~MedSynthLib.tasks.fill.UpsampleOptions`, checked (and normalised) where the step is made, less the
    ones the pipeline sets for every step (``model``, ``device``, ``seed``, ``time_budget``): a pipeline is
    refused before any step runs.

    Examples
    --------
    >>> EnhanceStep("denoise", {"method": "NLM", "strength": 0.5}).label()
    'denoise(method=nlm,strength=0.5)'
    >>> EnhanceStep("bias", {"speed": 2})
    Traceback (most recent call last):
    ...
    MedSynthLib.errors.InputError: step bias takes shrink, control_points, iterations, output_dtype, got 'speed'
    """

    name: str
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        kind = STEP_NAMES.get(str(self.name).strip().lower())
        if kind is None:
            raise InputError(f"unknown step {self.name!r}; steps are {', '.join(_STEP_OPTIONS)}")
        given = dict(self.options or {})
        allowed = self.knob_names(kind)
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            raise InputError(f"step {kind} takes {', '.join(allowed)}, got {', '.join(map(repr, unknown))}")
        built = _STEP_OPTIONS[kind].build(**given)
        object.__setattr__(self, "name", kind)
        object.__setattr__(self, "options", {name: getattr(built, name) for name in given})

    @staticmethod
    def knob_names(kind: str) -> tuple[str, ...]:
        """The options a ``kind`` step takes (its options class's, less the pipeline's)."""
        return tuple(name for name in _STEP_OPTIONS[kind].names() if name not in _PIPELINE_KNOBS)

    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in self.options.items())
        return f"{self.name}({extra})" if extra else self.name


def _range(options: type, name: str) -> str:
    spec = options.knob(name)
    return f"{spec.low:g}-{spec.high:g}"


def _grammar() -> str:
    return (f"bias[:SHRINK {_range(BiasOptions, 'shrink')}], denoise[:METHOD[:STRENGTH "
            f"{_range(DenoiseOptions, 'strength')}]] (methods: {', '.join(DENOISE_METHODS)}), "
            f"upsample:FACTOR {_range(UpsampleOptions, 'factor')}[:METHOD]")


def _parse_step(item: str) -> EnhanceStep:
    """One step of the grammar, or :class:`InputError` naming it."""
    name, *args = [part.strip() for part in item.split(":")]
    kind = STEP_NAMES.get(name.lower())
    if kind is None:
        raise InputError(f"unknown step {item!r}; steps are {_grammar()}")
    try:
        if kind == "bias":
            if len(args) > 1:
                raise ValueError
            return EnhanceStep(kind, {"shrink": int(args[0])} if args else {})
        if kind == "denoise":
            if len(args) > 2:
                raise ValueError
            options = {"method": args[0]} if args and args[0] else {}
            if len(args) == 2:
                options["strength"] = float(args[1])
            return EnhanceStep(kind, options)
        if not 1 <= len(args) <= 2:
            raise ValueError
        return EnhanceStep(kind, {"factor": int(args[0]), **({"method": args[1]} if len(args) == 2 else {})})
    except (ValueError, InputError):
        raise InputError(f"step {item!r} is malformed; use {_grammar()}") from None


def parse_steps(steps: Union[str, Sequence[Union[str, EnhanceStep]]]) -> list[EnhanceStep]:
    """Parse pipeline steps such as ``"bias,denoise,upsample:2"``; every step is checked before any runs.

    Grammar, per step: ``bias[:SHRINK]``, ``denoise[:METHOD[:STRENGTH]]``, ``upsample:FACTOR[:METHOD]``. A
    sequence may mix such strings and :class:`EnhanceStep` objects (what the Slicer panel hands over).

    Examples
    --------
    >>> [s.label() for s in parse_steps("bias:2,denoise:nlm,upsample:3")]
    ['bias(shrink=2)', 'denoise(method=nlm)', 'upsample(factor=3)']
    """
    items = [s.strip() for s in steps.split(",")] if isinstance(steps, str) else list(steps or ())
    if not items or any(item == "" for item in items):
        raise InputError(f"steps must be a non-empty comma-separated list such as 'bias,denoise,upsample:2', got {steps!r}")
    parsed: list[EnhanceStep] = []
    for item in items:
        if isinstance(item, EnhanceStep):
            parsed.append(item)
        elif isinstance(item, str):
            parsed.append(_parse_step(item))
        else:
            raise InputError(f"each step must be a string such as 'denoise:nlm' or an EnhanceStep, got {item!r}")
    return parsed


@dataclass(frozen=True)
class EnhanceOptions(TaskOptions):
    """Options of :func:`~MedSynthLib.tasks.enhance.enhance`: the steps, and what every step shares.

    ``steps`` is parsed and checked at construction (a string, or a sequence of strings and
    :class:`EnhanceStep` objects) and stored as a tuple of :class:`EnhanceStep`.

    Examples
    --------
    >>> [s.label() for s in EnhanceOptions(steps="bias:4,denoise:dct:1").steps]
    ['bias(shrink=4)', 'denoise(method=dct,strength=1.0)']
    """

    steps: Any = knob(None, help=f"steps in order, comma-separated: {_grammar()}")
    device: str = device_knob()
    seed: int = seed_knob("seed of the denoise and upsample steps (training, the fusion's probes); CPU runs are "
                          "deterministic for a seed")
    time_budget: Optional[float] = budget_knob("wall seconds for the whole pipeline, checked on the clock: each "
                                               "step gets what is left when it starts; unset: the sum of the "
                                               "steps' default budgets", low_open=True)
    #: The denoise model package for ``denoise:model`` steps (path, installed name or loaded package).
    model: Any = None

    def _check(self) -> None:
        if self.steps is None:
            raise InputError("enhance needs steps, such as 'bias,denoise,upsample:2'")
        object.__setattr__(self, "steps", tuple(parse_steps(self.steps)))
