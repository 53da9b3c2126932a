"""Enhance volumes: noise estimation, denoising, N4 bias-field correction, super-resolution, pipelines.

Public surface: :func:`estimate_noise`, :func:`estimate_noise_map` (a smooth local noise sigma per voxel, which
``denoise`` follows where it varies), :func:`denoise`, :func:`correct_bias`, :func:`super_resolve` (through-plane
upsampling: the fill task's :func:`~MedSynthLib.tasks.fill.upsample_slices`), :func:`enhance` (steps in order, all or
nothing) and :func:`parse_steps`; their options :class:`DenoiseOptions`, :class:`BiasOptions`,
:class:`EnhanceOptions` (with :class:`EnhanceStep`, one pipeline step) and :data:`DENOISE_METHODS`; the classical
kernels :func:`denoise_nlm` and :func:`denoise_aniso` work on plain arrays.

Every function takes a :class:`~MedSynthLib.volume.Volume` and returns a frozen result with a new volume on the same
grid (except super-resolution, which changes the slice spacing on purpose) in the input's dtype, plus a ``report``
dict. The task functions take ``(volume, options=None, /, *, mask=..., progress=..., cancel=..., **knobs)``: the
options object, or keywords that build the same one. Every result is checked
(:func:`~MedSynthLib.checks.check_result`) before it is returned, whichever front end asked. Inputs are never
modified; a cancellation raises :class:`~MedSynthLib.errors.Cancelled` and leaves them as they were.

The house, from the bottom up (no module imports one above it):

* ``_options`` (every knob and the step grammar; torch-free) and ``_results`` (result dataclasses, the cast back);
* the methods: ``_classical`` (non-local means, diffusion), ``_dct`` (sliding-window DCT filter),
  ``_collaborative`` (block matching), ``_sure`` (the convex SURE fusion, the ``fusion`` method), ``_selfsup``
  (blind-spot training on the volume), ``_bias`` (N4), ``_checks`` (is what was removed noise?);
* ``_runners`` (the denoise methods as one table), ``_noise`` (:func:`estimate_noise`, the cross-check);
* the public functions: ``_denoise`` (method choice, time budget, plausibility and fallbacks), ``_bias_task``
  (:func:`correct_bias`), ``_superres`` (:func:`super_resolve`);
* ``_pipeline`` (:func:`enhance`).

Methods of ``denoise(method=...)``:

``fusion``
    Training-free: block-matching collaborative filtering (the BM3D/BM4D scheme), a sliding-window 3D DCT filter
    of 8^3 blocks and non-local means, combined by convex SURE-fitted weights (no clean data). The CPU default.
    On a whole scan the weights are fitted on probe boxes and only the components they need (and the time
    budget allows) run on the whole volume.
    On anisotropic grids the blocks keep their voxel count and are shaped by the voxel size (2 x 6 x 6 for 4^3 on
    6.5 x 0.8 x 0.8 mm).
``dct``
    The sliding-window 3D DCT filter alone (4^3 blocks, shaped the same way, hard threshold then empirical
    Wiener): the fastest strong method.
``selfsup``
    ``fusion`` plus a blind-spot network trained on this volume alone (Noise2Self family) as two more SURE
    components. Training costs CPU minutes; on a GPU it is the default.
``model``
    A trained denoise model package (``task="denoise"``) applied slice by slice with 2.5D context
    (:mod:`MedSynthLib.network_inputs.denoise`).
``nlm``
    scikit-image non-local means, patch 5, distance 3, ``h = 0.6 sigma``.
``aniso``
    SimpleITK curvature anisotropic diffusion, iterations from the noise level.
``auto``
    ``model`` when a package is given, else ``selfsup`` on a GPU, else ``fusion``; set from the conservative
    sigma when the two noise estimators disagree, and falling back (``selfsup`` -> ``fusion`` -> ``dct`` ->
    ``nlm`` -> ``aniso`` -> unchanged) when what a method removed does not look like noise.

The names are imported on first use (:mod:`MedSynthLib._lazy`): the options and the method list load without torch.
"""

from ..._lazy import lazy_exports

#: Public name -> private module (imported on first use: the options and method list load without torch).
_EXPORTS = {
    **dict.fromkeys(("DENOISE_METHODS", "DenoiseOptions", "BiasOptions", "EnhanceOptions", "EnhanceStep",
                     "parse_steps"), "_options"),
    **dict.fromkeys(("DenoiseResult", "BiasResult", "SuperResolveResult", "EnhanceResult"), "_results"),
    "NoiseEstimate": "_noise",
    "estimate_noise": "_noise",
    "estimate_noise_map": "_noise",
    "denoise": "_denoise",
    "correct_bias": "_bias_task",
    "super_resolve": "_superres",
    "enhance": "_pipeline",
    **dict.fromkeys(("denoise_nlm", "denoise_aniso"), "_classical"),
    "denoise_collaborative": "_collaborative",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
