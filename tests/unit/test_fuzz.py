"""Property / fuzz tests (hypothesis) of the public transforms, readers and writers.

Every input either works, with the invariant that makes the function useful checked (budget respected, zero change
outside the ROI, split then merge is the identity, geometry kept through a write and a read), or raises the
project's own exception (:class:`trust_monai.errors.TrustMonaiError`), never a bare error from torch / numpy /
nibabel. Examples are derandomized (the same ones every run) and few, so the suite is fast and never flaky.
"""

from __future__ import annotations

import contextlib
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, assume, example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from trust_monai.errors import TrustMonaiError  # noqa: E402

FUZZ = settings(max_examples=40, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=12)


@contextlib.contextmanager
def ours_or_ok():
    """The body may succeed or raise a TrustMonaiError; any other exception fails the test."""
    try:
        yield
    except TrustMonaiError as e:
        msg = str(e)
        assert msg and "\n" not in msg.strip(), f"project errors are one line: {msg!r}"


# --------------------------------------------------------------------------------------------------------------------
# strategies
# --------------------------------------------------------------------------------------------------------------------

FLOATS = st.floats(allow_nan=True, allow_infinity=True, width=32)
FINITE = st.floats(-1e6, 1e6, allow_nan=False, width=32)
UNIT = st.floats(0.0, 1.0, allow_nan=False, width=32)


def spatial_shapes(min_dims=2, max_dims=3, min_side=1, max_side=12):
    return st.lists(st.integers(min_side, max_side), min_size=min_dims, max_size=max_dims).map(tuple)


@st.composite
def masks(draw, spatial, kind=None):
    """Label maps: empty, a single voxel, a random blob, or everything."""
    kind = kind or draw(st.sampled_from(["empty", "single", "random", "full"]))
    m = np.zeros(spatial, np.int64)
    if kind == "single":
        m[tuple(draw(st.integers(0, s - 1)) for s in spatial)] = draw(st.integers(1, 3))
    elif kind == "random":
        m = draw(hnp.arrays(np.int64, spatial, elements=st.integers(0, 3)))
    elif kind == "full":
        m[...] = 1
    return m


# --------------------------------------------------------------------------------------------------------------------
# roi: contour band and budget map
# --------------------------------------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data(), spatial=spatial_shapes(), width=st.integers(-1, 4), batch=st.integers(1, 2))
def test_contour_band_properties(data, spatial, width, batch):
    from trust_monai.transforms.roi import contour_band

    m = np.stack([data.draw(masks(spatial)) for _ in range(batch)])[:, None]
    band, region = contour_band(torch.as_tensor(m), width)
    fg = torch.as_tensor(m > 0).float()
    assert band.shape == region.shape == fg.shape
    assert set(torch.unique(band).tolist()) <= {0.0, 1.0} and set(torch.unique(region).tolist()) <= {0.0, 1.0}
    assert bool((region >= fg).all()), "the region holds the whole mask"
    assert bool((region >= band).all())
    for b in range(batch):
        if not m[b].any():
            assert not band[b].any() and not region[b].any(), "an empty mask allows no change anywhere"


@FUZZ
@given(data=st.data(), spatial=spatial_shapes(), eps=st.floats(0.0, 1.0), width=st.integers(0, 3),
       floor=st.floats(0.0, 1.0), values=st.sampled_from(["unit", "finite", "constant", "nonfinite"]))
def test_budget_map_respected_and_zero_outside_roi(data, spatial, eps, width, floor, values):
    from trust_monai.transforms.roi import budget_map

    m = data.draw(masks(spatial))[None, None]
    elements = {"unit": UNIT, "finite": FINITE, "constant": st.just(0.5), "nonfinite": FLOATS}[values]
    img = data.draw(hnp.arrays(np.float32, m.shape, elements=elements))
    with ours_or_ok():
        eps_map, band, region = budget_map(torch.as_tensor(img), torch.as_tensor(m), eps, width, floor)
        assert bool(torch.isfinite(eps_map).all())
        assert bool((eps_map >= 0).all()) and bool((eps_map <= eps * (1 + 1e-6)).all()), "budget exceeded"
        assert not bool(eps_map[region == 0].any()), "a budget outside the ROI"
        if eps > 0:
            assert bool((eps_map[band > 0] >= eps * (1 - 1e-6)).all()), "the contour band gets the full budget"
        return
    assert not np.isfinite(img).all(), "only a non-finite image may be refused"


@FEW
@given(shape=st.lists(st.integers(1, 4), min_size=0, max_size=6).map(tuple))
def test_roi_wrong_rank_is_our_error(shape):
    from trust_monai.transforms.roi import budget_map, contour_band, texture_map

    assume(len(shape) not in (4, 5))
    x = torch.zeros(shape)
    for fn in (lambda: contour_band(x), lambda: texture_map(x, x), lambda: budget_map(x, x, 0.1)):
        with pytest.raises(TrustMonaiError):
            fn()


# --------------------------------------------------------------------------------------------------------------------
# dual split / merge
# --------------------------------------------------------------------------------------------------------------------

DTYPES = [torch.float32, torch.float16, torch.float64, torch.int64, torch.uint8, torch.bool]


@FUZZ
@given(data=st.data(), spatial_dims=st.integers(1, 3), lead=st.lists(st.integers(1, 3), max_size=2),
       dtype=st.sampled_from(DTYPES))
def test_dual_split_then_merge_is_identity(data, spatial_dims, lead, dtype):
    from trust_monai.transforms import dual_merge, dual_split

    spatial = data.draw(spatial_shapes(spatial_dims, spatial_dims, 1, 9))
    shape = (*lead, *spatial)
    x = torch.as_tensor(data.draw(hnp.arrays(np.float32, shape, elements=FLOATS))).to(dtype) \
        if dtype.is_floating_point else torch.randint(0, 2 if dtype == torch.bool else 200, shape).to(dtype)
    if spatial[-1] % 2:
        with pytest.raises(TrustMonaiError, match="even"):
            dual_split(x, spatial_dims)
        return
    x_l, x_r = dual_split(x, spatial_dims)
    assert x_l.shape == x_r.shape == (*shape[:-1], spatial[-1] // 2) and x_l.dtype == dtype
    back = dual_merge(x_l, x_r, spatial_dims)
    assert back.dtype == dtype and back.shape == x.shape
    if dtype.is_floating_point:
        assert torch.equal(back.isnan(), x.isnan())
        assert torch.equal(torch.nan_to_num(back, 0.0), torch.nan_to_num(x, 0.0)), "split / merge is not exact"
    else:
        assert torch.equal(back, x)
    # every element lands in exactly one half: the multiset of values is kept
    if not dtype.is_floating_point:
        assert torch.equal(torch.sort(torch.cat([x_l.flatten(), x_r.flatten()]))[0], torch.sort(x.flatten())[0])


@FEW
@given(spatial_dims=st.integers(-2, 6), shape=st.lists(st.integers(0, 4), max_size=4).map(tuple))
def test_dual_split_bad_input_is_our_error(spatial_dims, shape):
    from trust_monai.transforms import dual_merge, dual_split

    x = torch.zeros(shape)
    with ours_or_ok():
        x_l, x_r = dual_split(x, spatial_dims)
        assert torch.equal(dual_merge(x_l, x_r, spatial_dims), x)
    with ours_or_ok():
        dual_merge(x, torch.zeros((*shape, 1)), spatial_dims)
        raise AssertionError("halves of different shapes must be refused")


# --------------------------------------------------------------------------------------------------------------------
# squeezes (feature squeezing defences) and the scan intensity window
# --------------------------------------------------------------------------------------------------------------------


@st.composite
def images(draw, channels=st.sampled_from([1, 3]), elements=UNIT, max_side=20, allow_3d=True, min_side=1):
    c = draw(channels)
    spatial = draw(spatial_shapes(2, 3 if allow_3d else 2, min_side, max_side))
    arr = draw(hnp.arrays(np.float32, (c, *spatial), elements=elements))
    return torch.as_tensor(arr) if draw(st.booleans()) else arr


@FUZZ
@given(img=images(elements=st.one_of(UNIT, FINITE, FLOATS), min_side=0), quality=st.integers(1, 95))
def test_jpeg_compress(img, quality):
    from trust_monai.transforms.squeeze import JPEGCompress

    with ours_or_ok():
        out = JPEGCompress(quality)(img)
        assert out.shape == img.shape and type(out) is type(img) and out.dtype == img.dtype
        o = np.asarray(out)
        assert np.isfinite(o).all() and o.min() >= 0 and o.max() <= 1
        return
    a = np.asarray(img)
    assert a.size == 0 or not np.isfinite(a).all()


@FUZZ
@given(img=images(elements=st.one_of(UNIT, FINITE, FLOATS), channels=st.integers(1, 4), min_side=0),
       bits=st.integers(1, 8))
def test_bit_depth_reduce(img, bits):
    from trust_monai.transforms.squeeze import BitDepthReduce

    t = BitDepthReduce(bits)
    with ours_or_ok():
        out = np.asarray(t(img))
        levels = 2**bits - 1
        assert out.shape == np.asarray(img).shape
        assert np.allclose(out * levels, np.round(out * levels), atol=1e-4), "values off the bit grid"
        assert out.min(initial=0) >= 0 and out.max(initial=1) <= 1
        np.testing.assert_array_equal(np.asarray(t(out)), out)  # idempotent
        return
    a = np.asarray(img)
    assert a.size == 0 or not np.isfinite(a).all()


@FUZZ
@given(img=images(elements=st.one_of(UNIT, FLOATS), channels=st.integers(1, 4), min_side=0))
def test_grayscale(img):
    from trust_monai.transforms.squeeze import Grayscale

    with ours_or_ok():
        out = np.asarray(Grayscale()(img))
        a = np.asarray(img)
        assert out.shape == a.shape
        if a.shape[0] == 3:
            assert np.allclose(out[0], out[1]) and np.allclose(out[1], out[2])
            assert np.allclose(out[0], np.tensordot([0.299, 0.587, 0.114], a, axes=(0, 0)), atol=1e-5)
        return
    a = np.asarray(img)
    assert a.size == 0 or not np.isfinite(a).all() or a.shape[0] not in (1, 3)


@FEW
@given(q=st.integers(-5, 200), bits=st.integers(-3, 20))
def test_squeeze_settings_validated(q, bits):
    from trust_monai.transforms.squeeze import BitDepthReduce, JPEGCompress

    with ours_or_ok():
        JPEGCompress(q)
        assert 1 <= q <= 95
    with ours_or_ok():
        BitDepthReduce(bits)
        assert 1 <= bits <= 8


@FUZZ
@given(data=st.data(), shape=st.lists(st.integers(0, 9), min_size=1, max_size=4).map(tuple),
       dtype=st.sampled_from([np.float32, np.float64, np.int16, np.uint8, np.uint16, np.bool_]),
       modality=st.sampled_from(["MR", "CT", "ct", "PET", ""]))
def test_scan_normalize(data, shape, dtype, modality):
    from trust_monai.transforms.intensity import ScanNormalize

    if np.dtype(dtype).kind == "f":
        big = float(np.float32(1e30))
        elements = st.one_of(st.floats(-big, big, width=32), FLOATS, st.just(7.0))
    else:
        elements = None
    arr = data.draw(hnp.arrays(dtype, shape, elements=elements))
    with ours_or_ok():
        out, (low, high) = ScanNormalize()(arr, modality)
        assert tuple(out.shape) == shape and high > low
        assert bool(torch.isfinite(out).all())
        if out.numel():
            assert float(out.min()) >= 0 and float(out.max()) <= 1
        return
    assert arr.size == 0 or not np.isfinite(arr.astype(np.float64)).all() or np.abs(arr).max() > 3e38


@pytest.mark.parametrize("value", [9.007199e15, -3e38, 1e-30, 0.0])
def test_scan_normalize_constant_image_of_any_size(value):
    """A constant scan gets a window that is still wider than zero in float64, however large its value (found by the
    fuzz test: 2**53 + 1 == 2**53, so a width-1 window collapsed and the output was NaN)."""
    from trust_monai.transforms.intensity import ScanNormalize

    out, (low, high) = ScanNormalize()(np.full((3, 2), value, np.float32))
    assert high > low and bool(torch.isfinite(out).all()) and float(out.max()) <= 1


# --------------------------------------------------------------------------------------------------------------------
# forgery transforms (training data for the forgery detector)
# --------------------------------------------------------------------------------------------------------------------


@FUZZ
@given(data=st.data(), which=st.sampled_from(["inject", "remove", "selfblend", "faceswap"]), seed=st.integers(0, 99),
       elements=st.sampled_from(["unit", "constant", "nonfinite"]))
def test_forgery_transforms(data, which, seed, elements):
    from trust_monai.transforms.forgery import CopyMoveForgery, FaceSwap, SelfBlend

    el = {"unit": UNIT, "constant": st.just(0.3), "nonfinite": FLOATS}[elements]
    img = data.draw(images(channels=st.sampled_from([1, 3]), elements=el, max_side=16))
    spatial = np.asarray(img).shape[1:]
    t = {"inject": lambda: CopyMoveForgery("inject"), "remove": lambda: CopyMoveForgery("remove"),
         "selfblend": SelfBlend, "faceswap": FaceSwap}[which]()
    t.set_random_state(seed)
    with ours_or_ok():
        if which == "faceswap":
            donor = data.draw(images(channels=st.just(np.asarray(img).shape[0]), max_side=16, allow_3d=False))
            out = t(img, donor) if len(spatial) == np.asarray(donor).ndim - 1 else t(img, img)
        elif which in ("inject", "remove"):
            out = t(img, mask=data.draw(masks(spatial))[None])
        else:
            out = t(img)
        o = np.asarray(out)
        assert o.shape == np.asarray(img).shape and type(out) is type(img)
        assert np.isfinite(o).all() and o.min() >= 0 and o.max() <= 1
        assert t.last_mask.shape == spatial and t.last_mask.min() >= 0 and t.last_mask.max() <= 1 + 1e-6
        # outside the forgery mask the image is unchanged (up to the clip to [0, 1])
        outside = np.broadcast_to(t.last_mask == 0, o.shape)
        np.testing.assert_allclose(o[outside], np.clip(np.asarray(img), 0, 1)[outside], atol=1e-6)
        return
    assert elements == "nonfinite", "only a non-finite image may be refused"


# --------------------------------------------------------------------------------------------------------------------
# image readers and writers
# --------------------------------------------------------------------------------------------------------------------


@st.composite
def affines(draw, ndim=3):
    """Orientation (any axis permutation and flips, plus a small rotation), spacing from 1e-3 to 1e4 mm, origin."""
    perm = draw(st.permutations(range(3)))
    flips = draw(st.lists(st.sampled_from([-1.0, 1.0]), min_size=3, max_size=3))
    spacing = draw(st.lists(st.floats(1e-3, 1e4), min_size=3, max_size=3))
    angle = draw(st.floats(-math.pi, math.pi))
    rot = np.eye(3)
    rot[:2, :2] = [[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]
    lin = rot @ np.eye(3)[:, perm] @ np.diag(np.asarray(flips) * np.asarray(spacing))
    a = np.eye(4)
    a[:3, :3] = lin
    a[:3, 3] = draw(st.lists(st.floats(-1e4, 1e4), min_size=3, max_size=3))
    return a


@FUZZ
@given(data=st.data(), fmt=st.sampled_from([".nii.gz", ".nii", ".nrrd"]),
       dtype=st.sampled_from([np.float32, np.float64, np.int16, np.uint8, np.uint16, np.int32]),
       shape=st.sampled_from([(5, 4, 1), (1, 1, 1), (3, 6, 2), (4, 3), (2, 3, 4, 2)]), aff=affines())
def test_write_read_round_trip_keeps_geometry(data, fmt, dtype, shape, aff):
    """Random dtypes, 1-slice volumes, single voxels, huge spacing, any orientation, NaN / Inf in floats."""
    import nibabel as nib
    import nrrd

    from trust_monai.data.io import probe_image, read_image, write_image

    floats = np.dtype(dtype).kind == "f"
    arr = data.draw(hnp.arrays(dtype, shape, elements=FLOATS if floats else None))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / f"in{fmt}"
        if fmt == ".nrrd":
            assume(len(shape) == 3)  # the NRRD source below is a 3D volume with space directions
            lps = np.diag([-1.0, -1.0, 1.0]) @ aff[:3, :3]
            nrrd.write(str(src), arr, {"space": "left-posterior-superior", "space directions": lps.T,
                                       "space origin": np.diag([-1.0, -1.0, 1.0]) @ aff[:3, 3]}, index_order="F")
        else:
            nib.save(nib.Nifti1Image(arr, aff), src)
        image, meta = read_image(src)
        assert probe_image(src)["shape"] == image.shape == shape
        out = Path(tmp) / f"out{fmt}"
        write_image(image, meta, out, derivation="fuzz")
        back, meta2 = read_image(out)
        assert back.shape == shape and back.dtype == image.dtype
        np.testing.assert_allclose(meta2.affine, meta.affine, rtol=1e-5, atol=1e-3 * max(1.0, np.abs(aff).max()))
        np.testing.assert_allclose(meta2.spacing, meta.spacing, rtol=1e-5)
        if floats:
            np.testing.assert_array_equal(np.isnan(back), np.isnan(image))
            np.testing.assert_array_equal(np.nan_to_num(back), np.nan_to_num(image))
        else:
            np.testing.assert_array_equal(back, image)


@FUZZ
@given(data=st.data(), mode=st.sampled_from(["L", "RGB", "RGBA", "I;16"]),
       size=st.tuples(st.integers(1, 9), st.integers(1, 9)))
def test_png_round_trip(data, mode, size):
    from PIL import Image

    from trust_monai.data.io import read_image, write_image

    dtype, channels = (np.uint16, 0) if mode == "I;16" else (np.uint8, {"L": 0, "RGB": 3, "RGBA": 4}[mode])
    shape = size + ((channels,) if channels else ())
    arr = data.draw(hnp.arrays(dtype, shape))
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "in.png"
        Image.fromarray(arr).save(src)  # PIL picks L / RGB / RGBA / I;16 from the shape and dtype
        image, meta = read_image(src)
        np.testing.assert_array_equal(image, arr)
        write_image(image, meta, Path(tmp) / "out.png")
        np.testing.assert_array_equal(read_image(Path(tmp) / "out.png")[0], arr)


def _valid_file(kind: str, folder: Path) -> Path:
    import nibabel as nib
    import nrrd
    from PIL import Image

    arr = np.arange(4 * 5 * 3, dtype=np.int16).reshape(4, 5, 3)
    path = folder / {"nii": "a.nii", "niigz": "a.nii.gz", "nrrd": "a.nrrd", "png": "a.png", "dcm": "a.dcm"}[kind]
    if kind in ("nii", "niigz"):
        nib.save(nib.Nifti1Image(arr, np.eye(4)), path)
    elif kind == "nrrd":
        nrrd.write(str(path), arr, {"encoding": "gzip"})
    elif kind == "png":
        Image.fromarray(arr[:, :, 0].astype(np.uint8)).save(path)
    else:
        from pydicom.data import get_testdata_file

        path.write_bytes(Path(get_testdata_file("CT_small.dcm")).read_bytes())
    return path


@FUZZ
@given(kind=st.sampled_from(["nii", "niigz", "nrrd", "png", "dcm"]), cut=st.floats(0.0, 0.999),
       flips=st.lists(st.tuples(st.floats(0, 0.999), st.integers(0, 255)), max_size=4),
       garbage=st.binary(max_size=64))
def test_damaged_files_give_input_file_error(kind, cut, flips, garbage):
    """Truncated, bit-flipped or garbage-extended files: a good read, or InputFileError naming the file."""
    from trust_monai.data.io import probe_image, read_image
    from trust_monai.errors import InputFileError

    with tempfile.TemporaryDirectory() as tmp:
        path = _valid_file(kind, Path(tmp))
        raw = bytearray(path.read_bytes())
        raw = raw[: max(1, int(len(raw) * cut))] if cut > 0.05 else raw
        for pos, value in flips:
            raw[int(pos * len(raw))] = value
        path.write_bytes(bytes(raw) + garbage)
        for fn in (probe_image, read_image):
            try:
                fn(path)
            except InputFileError as e:
                assert str(path) in str(e) and "\n" not in str(e).strip()
            except TrustMonaiError as e:  # pragma: no cover - any other project error would be a wrong type
                raise AssertionError(f"{fn.__name__}: {type(e).__name__} instead of InputFileError: {e}") from e


@FEW
@given(name=st.text(min_size=1, max_size=300), suffix=st.sampled_from(["", ".nii.gz", ".png", ".nrrd", ".dcm"]))
@example(name="x" * 300, suffix=".nii.gz")  # longer than a file name may be (ENAMETOOLONG)
@example(name="a\x00b", suffix=".png")  # NUL byte
@example(name="a\udcff", suffix="")  # a lone surrogate, as undecodable bytes come out of os.listdir
def test_odd_paths_give_input_file_error(name, suffix):
    """Missing files, names with NUL bytes, over-long names: InputFileError, not OSError / ValueError."""
    from trust_monai.data.io import detect_format, probe_image, read_image
    from trust_monai.errors import InputFileError

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / (name.replace("/", "_") + suffix)
        for fn in (detect_format, probe_image, read_image):
            with pytest.raises(InputFileError):
                fn(path)


@FEW
@given(suffix=st.sampled_from([".png", ".nii", ".nrrd", ".txt", ".dcm", ""]),
       src=st.sampled_from(["nii", "png", "nrrd"]), shape_change=st.booleans())
@example(suffix=".png", src="png", shape_change=True)  # (H, W, 1, 1): PIL's own TypeError before the fix
def test_write_image_bad_arguments_are_our_error(suffix, src, shape_change):
    """A suffix that does not match the source format, or an array of another rank: a clear project error."""
    from trust_monai.data.io import read_image, write_image

    with tempfile.TemporaryDirectory() as tmp:
        image, meta = read_image(_valid_file(src, Path(tmp)))
        if shape_change:
            image = image[..., None, None]
        with ours_or_ok():
            write_image(image, meta, Path(tmp) / f"out{suffix}")
            back, _ = read_image(Path(tmp) / f"out{suffix}")
            assert back.shape == image.shape


# --------------------------------------------------------------------------------------------------------------------
# datalists
# --------------------------------------------------------------------------------------------------------------------

JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                    max_leaves=12)
PATHS = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["imagesTr/a.nii.gz", "../x.nii", "/etc/passwd", "a/../../x", "a\x00b", "~/x", "//x", ".", "",
                     "imagesTr/../imagesTr/a.nii.gz", "x" * 400, "C:\\x.nii", "imagesTr//a.nii.gz"]),
)


@FUZZ
@given(doc=st.one_of(JSON, st.fixed_dictionaries({"training": st.lists(
    st.one_of(PATHS, st.fixed_dictionaries({"image": PATHS}, optional={"label": st.one_of(PATHS, st.integers())})),
    max_size=3)})), section=st.sampled_from(["training", "test"]), allow_outside=st.booleans())
@example(doc={"training": [{"image": "a\x00b"}]}, section="training", allow_outside=False)
@example(doc={"training": [{"image": "a\x00b"}]}, section="training", allow_outside=True)
@example(doc={"training": [{"image": "x" * 400}]}, section="training", allow_outside=False)
@example(doc={"training": [{"image": "/" + "x" * 400}]}, section="training", allow_outside=True)
@example(doc={"training": [{"image": "imagesTr/a.nii.gz", "label": "../../x"}]}, section="training",
         allow_outside=False)
@example(doc={"training": ["\n"]}, section="training", allow_outside=False)  # one-line errors for any file name
@example(doc={"training": "not a list"}, section="training", allow_outside=False)
@example(doc=[], section="training", allow_outside=False)
def test_load_datalist_fuzz(doc, section, allow_outside):
    """Any JSON: entries inside the dataset folder (unless allow_outside), or DatalistError / InputFileError."""
    from trust_monai.data.datalist import load_datalist

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ds"
        (root / "imagesTr").mkdir(parents=True)
        (root / "imagesTr" / "a.nii.gz").write_bytes(b"x")
        (root / "dataset.json").write_text(json.dumps(doc))
        with ours_or_ok():
            entries = load_datalist(root, section, allow_outside=allow_outside)
            for e in entries:
                for k in ("image", "label"):
                    if isinstance(e.get(k), str):
                        assert Path(e[k]).exists()
                        if not allow_outside:
                            assert Path(e[k]).resolve().is_relative_to(root.resolve())


@FEW
@given(raw=st.binary(max_size=200))
def test_load_datalist_garbage_file(raw):
    from trust_monai.data.datalist import load_datalist

    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "dataset.json").write_bytes(raw)
        with ours_or_ok():
            load_datalist(tmp)
