"""What each network sees and predicts: the contracts that inference and training share.

A trained package and the task that runs it must agree on channels, order, normalisation and output convention;
both sides build their tensors with these functions, so they cannot drift apart. ``fill`` (slice filling),
``denoise`` (2.5D denoising). Core module: imports nothing from ``tasks``, ``cli`` or ``training``.
"""

from .denoise import (DENOISE_INPUT_SPEC, DENOISE_PERCENTILES, assemble_denoise_outputs, check_denoise_input_spec,
                      make_denoise_inputs, normalise_for_denoise)
from .fill import (FILL_CONTEXT, FILL_INPUT_SPEC, FILL_PERCENTILES, apply_fill_output, check_fill_input_spec,
                   linear_estimate, make_fill_inputs)

__all__ = ["FILL_CONTEXT", "FILL_PERCENTILES", "FILL_INPUT_SPEC", "make_fill_inputs", "linear_estimate",
           "apply_fill_output", "check_fill_input_spec", "DENOISE_INPUT_SPEC", "DENOISE_PERCENTILES",
           "normalise_for_denoise", "make_denoise_inputs", "assemble_denoise_outputs", "check_denoise_input_spec"]
