"""Tests of the enhance options (``_options``): every knob checked once where the object is built, the step
grammar, and that they load without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from MedSynthLib.errors import InputError
from MedSynthLib.tasks.enhance import (DENOISE_METHODS, BiasOptions, DenoiseOptions, EnhanceOptions, EnhanceStep,
                                       parse_steps)


def test_the_options_and_the_method_list_load_without_torch():
    code = ("import sys; from MedSynthLib.tasks.enhance import DenoiseOptions, BiasOptions, EnhanceOptions, "
            "DENOISE_METHODS, EnhanceStep, parse_steps; EnhanceOptions(steps='bias,denoise:nlm,upsample:2'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_denoise_options_one_range_everywhere():
    assert DenoiseOptions.knob("method").choices == DENOISE_METHODS
    strength = DenoiseOptions.knob("strength")
    assert (strength.low, strength.high, strength.default) == (0.0, 2.0, 1.0)  # the library's range: 0 = unchanged
    options = DenoiseOptions.build(method="NLM", strength=1, modality="ct", method_options={"selfsup": {"steps": 5}})
    assert (options.method, options.strength, options.modality, options.selfsup_steps) == ("nlm", 1.0, "CT", 5)
    assert options.replace(strength=0.5).strength == 0.5 and options.strength == 1.0  # frozen: a copy
    for bad, message in (({"strength": 2.5}, "strength"), ({"method": "magic"}, "method"),
                         ({"modality": "PET"}, "modality"), ({"threads": 0}, "threads"),
                         ({"time_budget": 0}, "time budget"), ({"speed": 1}, "unknown option 'speed'"),
                         ({"method_options": {"nlm": {"h": 1}}}, "method_options"),
                         ({"method_options": {"selfsup": {"rate": 1}}}, "selfsup options")):
        with pytest.raises(InputError, match=message):
            DenoiseOptions.build(**bad)


def test_bias_options_one_range_everywhere():
    shrink = BiasOptions.knob("shrink")
    assert (shrink.low, shrink.high, shrink.default, shrink.whole) == (1, 16, 6, True)
    assert BiasOptions.build(shrink=2.0, iterations=[30, 20]).as_dict() == {
        "shrink": 2, "control_points": 4, "iterations": [30, 20], "time_budget": None, "output_dtype": "auto"}
    for bad in ({"shrink": 17}, {"shrink": 2.5}, {"iterations": ()}, {"iterations": (10, 0)},
                {"iterations": "many"}, {"control_points": 3}):
        with pytest.raises(InputError):
            BiasOptions.build(**bad)


def test_enhance_step_objects_are_checked_where_they_are_made():
    step = EnhanceStep("N4", {"shrink": 3.0})
    assert (step.name, step.options, step.label()) == ("bias", {"shrink": 3}, "bias(shrink=3)")
    assert EnhanceStep("denoise").label() == "denoise"
    assert EnhanceStep("superres", {"factor": 2, "method": "linear"}).name == "upsample"
    with pytest.raises(InputError, match="unknown step"):
        EnhanceStep("sharpen")
    with pytest.raises(InputError, match="step denoise takes"):
        EnhanceStep("denoise", {"device": "cpu"})  # the pipeline's knob, not a step's
    with pytest.raises(InputError, match="strength"):
        EnhanceStep("denoise", {"strength": 3})
    with pytest.raises(InputError, match="factor"):
        EnhanceStep("upsample", {"factor": 1})


def test_enhance_options_parse_their_steps_once():
    options = EnhanceOptions.build(steps=["bias", EnhanceStep("denoise", {"method": "dct"})], seed=3)
    assert [s.label() for s in options.steps] == ["bias", "denoise(method=dct)"]
    assert options.replace(seed=4).steps == options.steps
    assert EnhanceOptions.knob("time_budget").low_open
    with pytest.raises(InputError, match="needs steps"):
        EnhanceOptions.build()
    with pytest.raises(InputError, match="unknown step"):
        EnhanceOptions.build(steps="bias,sharpen")
    with pytest.raises(InputError, match="EnhanceStep"):
        parse_steps([3])


def test_parse_steps():
    steps = parse_steps("bias:2, denoise:nlm:0.5, upsample:3:linear")
    assert [(s.name, s.options) for s in steps] == [
        ("bias", {"shrink": 2}), ("denoise", {"method": "nlm", "strength": 0.5}),
        ("upsample", {"factor": 3, "method": "linear"})]
    for bad in ("", "bias,,denoise", "sharpen", "denoise:magic", "denoise:nlm:3", "upsample", "upsample:1", "bias:0"):
        with pytest.raises(InputError):
            parse_steps(bad)
