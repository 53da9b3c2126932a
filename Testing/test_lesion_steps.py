"""The four steps of insert_lesions, each on its own: resolve specs -> render -> measure -> report."""

import numpy as np
import pytest

from MedSynthLib.errors import InputError
from MedSynthLib.tasks.lesion import LesionOptions, LesionSpec, insert_lesions
from MedSynthLib.tasks.lesion._compose import render_lesions, valid_range
from MedSynthLib.tasks.lesion._insert import _prepare, _region_mask, _task_report
from MedSynthLib.tasks.lesion._report import describe_lesions
from MedSynthLib.tasks.lesion._specs import resolve_specs
from MedSynthLib.volume import Volume

AFFINE = np.array([[0.9, 0.1, 0, -20], [-0.1, 0.9, 0.05, 10], [0, -0.05, 2.0, 5], [0, 0, 0, 1.0]])


@pytest.fixture
def volume():
    rng = np.random.default_rng(1)
    return Volume((100 + rng.normal(0, 3, (24, 44, 44))).astype(np.float32), AFFINE)


def _resolved(volume, seed=3, **knobs):
    options, _ = _prepare(volume, LesionOptions.build(modality="MR", device="cpu", **knobs))
    mask, _ = _region_mask(volume, options)
    return options, mask, resolve_specs(volume, options, mask=mask, rng=np.random.default_rng(seed))


def test_resolving_draws_every_parameter_from_the_seed_and_places_centres_in_the_region(volume):
    region = np.zeros(volume.array.shape, bool)
    region[4:20, 6:38, 6:38] = True
    _, _, first = _resolved(volume, count=2, size_mm=4.0, min_spacing_mm=1.0, region=region, preset="mr-wmh")
    _, _, again = _resolved(volume, count=2, size_mm=4.0, min_spacing_mm=1.0, region=region, preset="mr-wmh")
    assert first.specs == again.specs and all(s.seed is not None for s in first.specs)
    for spec in first.specs:
        i, j, k = np.round(volume.ras_points_to_ijk(np.asarray(spec.centre_ras))).astype(int)
        assert region[k, j, i]
    _, _, other = _resolved(volume, seed=4, count=2, size_mm=4.0, min_spacing_mm=1.0, region=region, preset="mr-wmh")
    assert other.specs != first.specs


def test_resolving_refuses_an_explicit_centre_outside_the_region(volume):
    region = np.zeros(volume.array.shape, bool)
    region[2:6, 2:10, 2:10] = True
    centre = tuple((AFFINE @ [22, 22, 12, 1])[:3])
    with pytest.raises(InputError, match="outside the region"):
        _resolved(volume, centres=[centre], region=region, size_mm=6.0)


def test_rendering_changes_only_the_regions_of_influence_and_writes_the_labels(volume):
    centre = tuple((AFFINE @ [22, 22, 12, 1])[:3])
    request, mask, resolved = _resolved(volume, specs=[LesionSpec(centre_ras=centre, diameter_mm=8, contrast=0.5,
                                                                  core_fraction=0.4, core_contrast=-0.3)])
    before = volume.array.copy()
    composite = render_lesions(volume, resolved.specs, resolved.shapes, mask=mask, painter=None, labels=None,
                               value_range=valid_range(volume, "MR"))
    assert np.array_equal(volume.array, before)  # the input is never touched
    (item,) = composite.items
    outside = np.ones(volume.array.shape, bool)
    outside[item.crop] = ~item.roi_mask
    assert np.array_equal(composite.out[outside], before[outside])
    assert set(np.unique(composite.classes)) == {0, 1, 2}
    assert np.array_equal(composite.instances > 0, (composite.classes == 1) | (composite.classes == 2))


def test_measuring_reports_the_labelled_volume_and_the_report_names_what_ran(volume):
    centre = tuple((AFFINE @ [22, 22, 12, 1])[:3])
    request, mask, resolved = _resolved(volume, specs=[LesionSpec(centre_ras=centre, diameter_mm=9, contrast=0.4)])
    composite = render_lesions(volume, resolved.specs, resolved.shapes, mask=mask, painter=None, labels=None,
                               value_range=valid_range(volume, "MR"))
    (entry,) = describe_lesions(volume, composite, resolved.specs, mask)
    voxel_ml = float(np.prod(volume.spacing)) / 1000
    assert entry["volume_ml"] == pytest.approx(np.count_nonzero(composite.instances == 1) * voxel_ml, abs=1e-4)
    assert abs(entry["contrast_error"]) < 0.02
    report = _task_report(request.replace(seed=7), None, [entry], composite, [], seconds=0.5)
    assert report["method"] == "procedural" and report["seed"] == 7 and report["lesions"] == [entry]


def test_the_steps_compose_to_insert_lesions(volume):
    centre = tuple((AFFINE @ [22, 22, 12, 1])[:3])
    spec = LesionSpec(centre_ras=centre, diameter_mm=9, contrast=0.4)
    request, mask, resolved = _resolved(volume, seed=0, specs=[spec])
    composite = render_lesions(volume, resolved.specs, resolved.shapes, mask=mask, painter=None, labels=None,
                               value_range=valid_range(volume, "MR"))
    result = insert_lesions(volume, specs=[spec], modality="MR", seed=0)
    assert np.array_equal(result.volume.array, composite.out)
    assert np.array_equal(result.labels.array, composite.classes.astype(np.uint8))
