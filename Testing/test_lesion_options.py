"""``LesionOptions``: one request per call, checked once; the one rule for the default preset and region."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from test_lesion import _centre, ct_chest, mr_head

from MedSynthLib.errors import InputError
from MedSynthLib.tasks.lesion import (DEFAULT_PRESETS, PRESETS, REGIONS, LesionOptions, default_preset, default_region,
                                      insert_lesions, list_presets)
from MedSynthLib.volume import Volume


@pytest.fixture(scope="module")
def head() -> Volume:
    return mr_head((28, 48, 48))


def test_options_preset_list_and_defaults_import_without_torch_or_scipy():
    code = ("import sys; from MedSynthLib.tasks.lesion import LesionOptions, list_presets, default_preset; "
            "LesionOptions.knobs(); list_presets(); default_preset('MR'); "
            "print('torch' in sys.modules, 'scipy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_unknown_option_is_refused_in_one_line_naming_it(head):
    for call in (lambda: insert_lesions(head, count=1, sise_mm=3.0), lambda: LesionOptions.build(count=1, sise_mm=3)):
        with pytest.raises(InputError) as caught:
            call()
        message = str(caught.value)
        assert message.startswith("unknown option 'sise_mm'; the options are preset, count, size_mm")
        assert "\n" not in message


def test_exactly_one_of_specs_centres_or_count_is_the_options_rule(head):
    for given in ({}, {"count": 1, "centres": [(0, 0, 0)]}, {"specs": [{"diameter_mm": 5}], "count": 2}):
        with pytest.raises(InputError, match="give exactly one of specs, centres or count"):
            LesionOptions(**given)
    with pytest.raises(InputError, match="got centres and count"):
        insert_lesions(head, count=1, centres=[_centre(head)])
    assert LesionOptions(centres=[np.array([1, 2, 3])]).centres == ((1.0, 2.0, 3.0),)
    with pytest.raises(InputError, match="centres must be a non-empty list"):
        LesionOptions(centres=[(1, 2)])


def test_knobs_carry_ranges_choices_and_an_alias():
    assert LesionOptions.knob("preset").choices == ("auto", *PRESETS)
    assert LesionOptions.knob("region").choices == ("auto", *REGIONS)
    assert set(LesionOptions.knob("label_mode").choices) == {"classes", "instances"}
    assert (LesionOptions.knob("size_mm").low, LesionOptions.knob("size_mm").high) == (0.5, 300.0)
    assert (LesionOptions.knob("count").low, LesionOptions.knob("count").whole) == (1, True)
    assert all(p["auto_region"] in REGIONS for p in list_presets())
    assert LesionOptions.build(count=1, size=6).size_mm == 6.0
    with pytest.raises(InputError, match="give size or size_mm, not both"):
        LesionOptions.build(count=1, size=6, size_mm=7)
    options = LesionOptions(count=1, modality="ct", preset="CT-NODULE-SOLID")
    assert (options.modality, options.preset) == ("CT", "ct-nodule-solid")
    assert options.replace(count=3).count == 3 and options.count == 1  # frozen: a copy
    with pytest.raises(InputError, match="modality must be one of ct, mr"):
        LesionOptions(count=1, modality="PET")


def test_a_region_mask_is_data_and_a_name_a_knob(head):
    mask = head.array > 800
    options = LesionOptions.build(count=1, region=mask)
    assert options.region is None and options.region_mask is mask
    assert "region_mask" not in options.as_dict() and options.as_dict()["count"] == 1
    named = options.replace(region="lung")
    assert named.region == "lung" and named.region_mask is None
    with pytest.raises(InputError, match="not both"):
        LesionOptions(count=1, region="auto", region_mask=mask)
    with pytest.raises(InputError, match="region must be one of auto, white-matter"):
        LesionOptions(count=1, region="spleen")


def test_default_preset_is_one_rule_by_modality_and_body_part():
    assert default_preset("MR") == "mr-enhancing-lesion" == DEFAULT_PRESETS["MR"]
    assert default_preset("ct") == "ct-nodule-solid" == DEFAULT_PRESETS["CT"]
    assert default_preset("CT", "HEAD") == "ct-haemorrhage"
    assert default_preset("CT", "liver") == "ct-liver-hypodense"
    assert default_preset("MR", "brain") == "mr-enhancing-lesion"
    assert all(PRESETS[default_preset(m)].modality == m for m in ("CT", "MR"))
    with pytest.raises(InputError, match="modality must be one of CT, MR"):
        default_preset("PET")
    with pytest.raises(InputError, match="no MR preset for the chest"):
        default_preset("MR", "chest")
    with pytest.raises(InputError, match="body part must be one of head, chest, abdomen"):
        default_preset("CT", "knee")


def test_default_region_follows_the_preset_or_the_modality_default():
    assert default_region("mr-enhancing-tumour") == "brain"
    assert default_region(None, "CT") == default_region("auto", "CT") == PRESETS["ct-nodule-solid"].region == "lung"
    assert default_region(None, "MR") == "brain"  # mr-metastasis: at the grey-white junction, anywhere in the brain
    assert LesionOptions(count=1).region_tissue("MR") == "brain"  # no region + random: auto
    assert LesionOptions(count=1, region="liver").region_tissue("MR") == "liver"
    assert LesionOptions(centres=[(0, 0, 0)]).region_tissue("MR") is None  # given centres: no region to check


def test_preset_auto_draws_the_default_of_the_modality_and_body_part(head):
    from MedSynthLib.tasks.lesion import auto_preset

    chest = ct_chest((24, 48, 48))
    for volume in (head, chest):
        modality = "CT" if volume is chest else "MR"
        expected = auto_preset(volume, modality)[0]
        auto = insert_lesions(volume, count=1, preset="auto", size_mm=6.0, seed=2)
        named = insert_lesions(volume, count=1, preset=expected, size_mm=6.0, seed=2)
        assert auto.report["preset"] == expected and auto.report["modality"] == modality
        assert np.array_equal(auto.volume.array, named.volume.array)
        assert auto.report["region"] == "auto"


def test_one_options_object_is_the_same_call_as_its_keywords(head):
    options = LesionOptions(count=2, preset="mr-wmh", size_mm=4.0, seed=5, min_spacing_mm=2.0, region="auto")
    by_object = insert_lesions(head, options)
    by_keywords = insert_lesions(head, count=2, preset="mr-wmh", size_mm=4.0, seed=5, min_spacing_mm=2.0,
                                 region="auto")
    changed = insert_lesions(head, options, seed=6)
    assert np.array_equal(by_object.volume.array, by_keywords.volume.array)
    assert by_object.specs == by_keywords.specs and changed.specs != by_object.specs
    assert options.seed == 5  # the object handed in is not changed
