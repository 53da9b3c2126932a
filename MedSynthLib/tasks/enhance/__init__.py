"""Enhance volumes: noise estimation, denoising, N4 bias-field correction, super-resolution, pipelines.

Public surface: :func:`estimate_noise`, :func:`denoise`, :func:`correct_bias`, :func:`super_resolve` (through-plane
upsampling: the fill task's :func:`~MedSynthLib.tasks.fill.upsample_slices`), :func:`enhance` (steps in order, all or
nothing) and :func:`parse_steps`; the classical kernels :func:`denoise_nlm` and :func:`denoise_aniso` work on plain
arrays. Private modules: ``_classical``, ``_selfsup`` (blind-spot training on the volume), ``_bias`` (N4),
``_enhance`` (the thin public layer), ``_denoise`` (method choice, noise cross-check, time budget,
fallbacks), ``_checks`` (is what was removed noise?), ``_dct`` (sliding-window DCT filter), ``_sure`` (the
convex SURE fusion, the ``fusion`` method).
"""

from ._classical import denoise_aniso, denoise_nlm
from ._denoise import denoise
from ._enhance import (DENOISE_METHODS, BiasResult, DenoiseResult, EnhanceResult,
                       EnhanceStep, NoiseEstimate, SuperResolveResult, correct_bias, enhance, estimate_noise,
                       parse_steps, super_resolve)

__all__ = ["DENOISE_METHODS", "NoiseEstimate", "DenoiseResult", "BiasResult",
           "SuperResolveResult", "EnhanceResult", "EnhanceStep", "estimate_noise", "denoise", "correct_bias",
           "super_resolve", "parse_steps", "enhance", "denoise_nlm", "denoise_aniso"]
