"""RTSTRUCT rasterisation and SEG reading / writing, on synthetic polygons and on the real LUNG1-001 study.

The real-data tests skip when ``../shared/data/NSCLC-Radiomics/LUNG1-001`` is absent; most use a copy of the slices
that GTV-1 is drawn on (see :mod:`tests.unit.lung1_subset`: contours on slices that were not copied are dropped).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from parameterized import parameterized

from tests.unit import lung1_subset
from trust_monai.data.dicom_rt import fill_polygon
from trust_monai.errors import InputFileError

needs_lung1 = pytest.mark.skipif(not lung1_subset.available(), reason="LUNG1-001 not in ../shared/data")

# (name, polygons as (cols, rows) vertex lists, image shape (rows, cols), expected inside pixel count)
FILL_CASES = [
    ("square", [[(1.5, 1.5), (4.5, 1.5), (4.5, 4.5), (1.5, 4.5)]], (8, 8), 9),
    ("hole_even_odd", [[(0.5, 0.5), (7.5, 0.5), (7.5, 7.5), (0.5, 7.5)],
                       [(2.5, 2.5), (5.5, 2.5), (5.5, 5.5), (2.5, 5.5)]], (8, 8), 49 - 9),
    ("clipped_at_the_edge", [[(-3.5, -3.5), (2.5, -3.5), (2.5, 2.5), (-3.5, 2.5)]], (8, 8), 9),
    ("non_square_image", [[(0.5, 0.5), (9.5, 0.5), (9.5, 2.5), (0.5, 2.5)]], (4, 12), 9 * 2),
    ("triangle", [[(0.3, 0.2), (6.7, 0.4), (0.1, 6.6)]], (8, 8), None),
    ("concave", [[(0.2, 0.3), (7.6, 0.1), (7.4, 7.7), (4.1, 2.2), (0.3, 7.2)]], (8, 8), None),
]


@parameterized.expand(FILL_CASES)
def test_fill_polygon(_, polygons, shape, expected):
    mask = np.zeros(shape, bool)
    for poly in polygons:
        cols, rows = np.asarray(poly, float).T
        mask ^= fill_polygon(cols, rows, shape)
    if expected is None:  # no pixel centre on an edge: equal to skimage's point-in-polygon fill of pixel centres
        from skimage.draw import polygon

        ref = np.zeros(shape, bool)
        rr, cc = polygon(rows, cols, shape)
        ref[rr, cc] = True
        np.testing.assert_array_equal(mask, ref)
    else:
        assert mask.sum() == expected
        if len(polygons) == 2:
            assert not mask[3:5, 3:5].any() and mask[1, 1], "the inner contour is a hole"


def _grid(folder: Path):
    from trust_monai.data.dicom_rt import series_grid
    from trust_monai.data.io_dicom import _series_headers

    return series_grid(_series_headers(folder), folder)


@pytest.fixture(scope="module")
def lung1_grid():
    if not lung1_subset.available():
        pytest.skip("LUNG1-001 not in ../shared/data")
    return _grid(lung1_subset.LUNG1 / "image")


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    if not lung1_subset.available():
        pytest.skip("LUNG1-001 not in ../shared/data")
    return lung1_subset.subset(tmp_path_factory.mktemp("lung1_subset"), margin=2)


@needs_lung1
def test_lung1_volumes_match_contour_areas(lung1_grid):
    """Each structure's voxel count x voxel volume equals the sum of its contour areas (shoelace) x slice thickness
    within 1% on the full 134-slice study (measured: GTV-1 -0.01%, Spinal-Cord +0.12%, lungs +0.32% / +0.19%);
    the grid is the one read_image gives."""
    import pydicom

    from trust_monai.data.dicom_rt import rasterise_contours

    rt = pydicom.dcmread(lung1_subset.RTSTRUCT)
    assert lung1_grid.shape == (512, 512, 134)
    voxel = float(np.prod(np.linalg.norm(lung1_grid.affine[:3, :3], axis=0)))
    assert voxel == pytest.approx(0.9765625 ** 2 * 3.0)
    for roi, item in zip(rt.StructureSetROISequence, rt.ROIContourSequence):
        assert int(item.ReferencedROINumber) == int(roi.ROINumber)
        area = 0.0
        for c in item.ContourSequence:
            p = np.asarray(c.ContourData, float).reshape(-1, 3)
            area += 0.5 * abs(np.dot(p[:, 0], np.roll(p[:, 1], 1)) - np.dot(p[:, 1], np.roll(p[:, 0], 1)))
        mask = rasterise_contours(item.ContourSequence, lung1_grid, lung1_subset.RTSTRUCT, roi.ROIName)
        ratio = mask.sum() * voxel / (area * 3.0)
        assert abs(ratio - 1) < 0.01, (roi.ROIName, ratio)


@needs_lung1
def test_lung1_grid_is_read_image_grid(subset):
    from trust_monai.data.io import read_image

    arr, meta = read_image(subset / "image")
    grid = _grid(subset / "image")
    assert arr.shape == grid.shape
    np.testing.assert_allclose(meta.affine, grid.affine)


@needs_lung1
def test_roi_choice_order_and_errors(subset):
    from trust_monai.data.dicom_rt import rasterise_rtstruct

    grid = _grid(subset / "image")
    rt = subset / "mask_rtstruct" / "1-1.dcm"
    label, names = rasterise_rtstruct(rt, grid)
    assert names == ["GTV-1", "Spinal-Cord", "Lung-Left", "Lung-Right"] and label.max() == 4
    gtv, names = rasterise_rtstruct(rt, grid, ["gtv-1"])  # case-insensitive, spelled as the file spells it
    assert names == ["GTV-1"] and set(np.unique(gtv)) == {0, 1}
    # overlap (GTV-1 and Lung-Left share voxels in this study): the structure listed first keeps the voxel
    a, _ = rasterise_rtstruct(rt, grid, ["GTV-1", "Lung-Left"])
    b, _ = rasterise_rtstruct(rt, grid, ["Lung-Left", "GTV-1"])
    assert np.array_equal(a == 1, gtv == 1) and 0 < (b == 2).sum() < (gtv == 1).sum()
    assert np.array_equal((a > 0), (b > 0))
    with pytest.raises(InputFileError, match=r"1-1\.dcm.*no structure named 'Heart'.*GTV-1, Spinal-Cord, Lung-Left, "
                                             r"Lung-Right"):
        rasterise_rtstruct(rt, grid, ["GTV-1", "Heart"])


def _broken(subset: Path, tmp: Path, how: str) -> Path:
    """A copy of the subset's RTSTRUCT with the first GTV-1 contour broken ``how``."""
    import pydicom

    rt = pydicom.dcmread(subset / "mask_rtstruct" / "1-1.dcm")
    c = rt.ROIContourSequence[0].ContourSequence[0]
    p = np.asarray(c.ContourData, float).reshape(-1, 3)
    if how == "empty":
        c.ContourData, c.NumberOfContourPoints = [], 0
    elif how == "outside_image":
        p[:, 0] += 2000.0
    elif how == "outside_series":
        p[:, 2] += 600.0
    elif how == "between_slices":
        p[:, 2] += 1.5  # half a 3 mm slice
    elif how == "unknown_image":
        ref = pydicom.Dataset()
        ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5"
        c.ContourImageSequence = [ref]
    if how not in ("empty", "unknown_image"):
        c.ContourData = [f"{v:.4f}" for v in p.ravel()]
    out = tmp / f"{how}.dcm"
    rt.save_as(out)
    return out


@needs_lung1
@pytest.mark.parametrize("how, message", [
    ("empty", "contour 1 is empty"),
    ("outside_image", "contour 1 lies outside the image"),
    ("outside_series", "contour 1 lies outside the series"),
    ("between_slices", "does not lie on a slice plane"),
    ("unknown_image", "refers to image 1.2.3.4.5, which is not in the series"),
])
def test_bad_contours_are_one_line_errors(subset, tmp_path, how, message):
    from trust_monai.data.dicom_rt import rasterise_rtstruct

    path = _broken(subset, tmp_path, how)
    with pytest.raises(InputFileError) as err:
        rasterise_rtstruct(path, _grid(subset / "image"), ["GTV-1"])
    text = str(err.value)
    assert str(path) in text and message in text and "GTV-1" in text and "\n" not in text


@needs_lung1
def test_seg_round_trip_and_geometry_check(subset, tmp_path):
    """A label map written as SEG (highdicom) reads back voxel for voxel; a SEG whose frames lie elsewhere, or that
    was made from another series, is refused naming the file."""
    import pydicom

    from trust_monai.data.dicom_rt import rasterise_rtstruct
    from trust_monai.data.dicom_seg import read_seg_labels, write_seg

    grid = _grid(subset / "image")
    label, names = rasterise_rtstruct(subset / "mask_rtstruct" / "1-1.dcm", grid)
    seg_path = write_seg(label, grid, names, tmp_path / "seg.dcm", "test")
    back, got = read_seg_labels(seg_path, grid)
    assert got == names and np.array_equal(back, label)
    two, got = read_seg_labels(seg_path, grid, ["lung-right", "GTV-1"])
    assert got == ["Lung-Right", "GTV-1"] and np.array_equal(two == 2, label == 1)
    with pytest.raises(InputFileError, match="no segment named 'Heart'"):
        read_seg_labels(seg_path, grid, ["Heart"])

    ds = pydicom.dcmread(seg_path)
    pos = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    pos.ImagePositionPatient = [float(v) + (10.0 if i == 0 else 0.0) for i, v in enumerate(pos.ImagePositionPatient)]
    moved = tmp_path / "moved.dcm"
    ds.save_as(moved)
    with pytest.raises(InputFileError, match=r"moved\.dcm: frame 1 lies at .* does not match the series geometry"):
        read_seg_labels(moved, grid)
    other = _grid(lung1_subset.LUNG1 / "image")
    other.headers = other.headers[:3]  # a series without the SEG's source images
    with pytest.raises(InputFileError, match=r"seg\.dcm: frame \d+ was derived from image .* not in series"):
        read_seg_labels(seg_path, other)
