"""QC pictures are shown the way radiologists read them, whatever the volume's direction matrix."""

import numpy as np
import pytest

from MedSynthLib import Volume
from MedSynthLib.qc import qc_picture


def _marked(diagonal):
    """Axial volume with a bright voxel block at the patient's anterior-right, in any axis sign."""
    array = np.zeros((3, 20, 30), np.float32)
    array[:] = 10
    volume = Volume(array, np.diag([*diagonal, 1.0]))
    ijk = np.rint(volume.ras_points_to_ijk([[1e3, 1e3, 0]]).clip(0, None))[0]  # nearest corner to R, A
    i = 0 if ijk[0] == 0 else 29
    j = 0 if ijk[1] == 0 else 19
    marked = array.copy()
    marked[1, max(j - 2, 0):j + 3, max(i - 2, 0):i + 3] = 100
    return volume.with_array(marked)


@pytest.mark.parametrize("diagonal", [(1, 1, 1), (-1, -1, 1), (-1, 1, 1), (1, -1, 1)])
def test_anterior_right_is_top_left(diagonal):
    volume = _marked(diagonal)
    picture = qc_picture(volume, volume, axis=0, index=1)
    before_panel = picture[:, :30].astype(float)
    rows, cols = np.nonzero(before_panel > 200)
    assert rows.max() < 5 and cols.max() < 5
