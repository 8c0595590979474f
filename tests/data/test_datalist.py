"""load_datalist: schema, path containment, int labels, missing files; check_readable on real small images."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from trust_monai.data.datalist import DATALIST_SCHEMA_PATH, check_readable, load_datalist
from trust_monai.errors import DatalistError, InputFileError, TrustMonaiError

NIB_DATA = Path(nib.__file__).parent / "tests" / "data"


def write_dataset(root: Path, data: dict | list | str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    text = data if isinstance(data, str) else json.dumps(data)
    (root / "dataset.json").write_text(text)
    return root


@pytest.fixture
def seg_dataset(tmp_path: Path) -> Path:
    """A Decathlon-style segmentation dataset with real NIfTI files."""
    root = tmp_path / "Task01"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    for name in ("a", "b"):
        shutil.copy(NIB_DATA / "anatomical.nii", root / "imagesTr" / f"{name}.nii")
        lab = nib.Nifti1Image(np.zeros((33, 41, 25), np.uint8), np.eye(4))
        lab.to_filename(root / "labelsTr" / f"{name}.nii.gz")
    shutil.copy(NIB_DATA / "anatomical.nii", root / "imagesTs" / "c.nii")
    return write_dataset(
        root,
        {
            "name": "toy",
            "description": "two training cases",
            "labels": {"0": "background", "1": "organ"},
            "numTraining": 2,
            "training": [
                {"image": "imagesTr/a.nii", "label": "labelsTr/a.nii.gz"},
                {"image": "./imagesTr/b.nii", "label": "labelsTr/b.nii.gz", "site": "H1"},
            ],
            "test": ["imagesTs/c.nii"],  # the Decathlon form: bare strings
        },
    )


@pytest.fixture
def cls_dataset(tmp_path: Path) -> Path:
    """A natural-image classification dataset: PNG images, integer labels."""
    from PIL import Image

    root = tmp_path / "cifar_like"
    (root / "train").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / "train" / f"{i}.png")
    return write_dataset(root, {"training": [{"image": f"train/{i}.png", "label": i} for i in range(3)]})


def test_segmentation_paths_resolved(seg_dataset):
    entries = load_datalist(seg_dataset)
    assert [e["image"] for e in entries] == [
        str(seg_dataset / "imagesTr" / "a.nii"),
        str(seg_dataset / "imagesTr" / "b.nii"),  # "./" normalised away
    ]
    assert all(os.path.isabs(e["label"]) and os.path.exists(e["label"]) for e in entries)
    assert entries[1]["site"] == "H1"  # other keys are passed through untouched
    test = load_datalist(seg_dataset, section="test", keys=("image",))
    assert test == [{"image": str(seg_dataset / "imagesTs" / "c.nii")}]


def test_json_file_path_accepted(seg_dataset):
    assert load_datalist(seg_dataset / "dataset.json") == load_datalist(seg_dataset)


def test_int_labels_untouched(cls_dataset):
    entries = load_datalist(cls_dataset)
    assert [e["label"] for e in entries] == [0, 1, 2]
    assert all(type(e["label"]) is int for e in entries)
    assert entries[2]["image"] == str(cls_dataset / "train" / "2.png")


@pytest.mark.parametrize(
    "bad",
    [
        "/etc/passwd",
        "../outside.nii",
        "imagesTr/../../outside.nii",
    ],
)
def test_escapes_refused_and_allowed_on_request(tmp_path, bad):
    outside = tmp_path / "outside.nii"
    shutil.copy(NIB_DATA / "anatomical.nii", outside)
    bad = str(outside) if bad == "/etc/passwd" else bad  # an absolute path that exists
    root = write_dataset(tmp_path / "ds", {"training": [{"image": "ok.nii"}, {"image": bad}]})
    (root / "imagesTr").mkdir()
    shutil.copy(NIB_DATA / "anatomical.nii", root / "ok.nii")

    with pytest.raises(DatalistError) as exc:
        load_datalist(root)
    msg = str(exc.value)
    assert "training[1].image" in msg and bad in msg

    entries = load_datalist(root, allow_outside=True)
    assert Path(entries[1]["image"]).resolve() == outside.resolve()


def test_dotdot_that_stays_inside_is_fine(seg_dataset):
    write_dataset(seg_dataset, {"training": [{"image": "labelsTr/../imagesTr/a.nii"}]})
    assert load_datalist(seg_dataset)[0]["image"] == str((seg_dataset / "imagesTr" / "a.nii").resolve())


def test_symlink_escape_refused(tmp_path):
    outside = tmp_path / "private"
    outside.mkdir()
    shutil.copy(NIB_DATA / "anatomical.nii", outside / "secret.nii")
    root = write_dataset(tmp_path / "ds", {"training": [{"image": "link/secret.nii"}]})
    try:
        (root / "link").symlink_to(outside, target_is_directory=True)
    except OSError:
        pytest.skip("symlinks not supported here")
    with pytest.raises(DatalistError, match="outside the dataset folder"):
        load_datalist(root)
    assert load_datalist(root, allow_outside=True)[0]["image"] == str(root / "link" / "secret.nii")


def test_missing_listed_file(seg_dataset):
    (seg_dataset / "labelsTr" / "b.nii.gz").unlink()
    with pytest.raises(InputFileError) as exc:
        load_datalist(seg_dataset)
    assert str(seg_dataset / "labelsTr" / "b.nii.gz") in str(exc.value)
    assert "training[1].label" in str(exc.value)
    assert len(load_datalist(seg_dataset, check_files=False)) == 2


def test_missing_dataset_json(tmp_path):
    with pytest.raises(DatalistError, match="dataset.json"):
        load_datalist(tmp_path)


def test_missing_section_lists_present(seg_dataset):
    with pytest.raises(DatalistError) as exc:
        load_datalist(seg_dataset, section="validation")
    assert "test" in str(exc.value) and "training" in str(exc.value)


@pytest.mark.parametrize(
    "data,fragment",
    [
        ({"training": [{"image": "a.nii"}, {"label": "b.nii"}]}, "training[1]"),
        ({"training": [{"image": 3}]}, "training[0]"),
        ({"training": [{"image": "a.nii", "label": 1.5}]}, "training[0].label"),
        ({"training": {"image": "a.nii"}}, "training"),
        ([{"image": "a.nii"}], "top level"),
        ("{not json", "not valid JSON"),
    ],
)
def test_schema_violations(tmp_path, data, fragment):
    root = write_dataset(tmp_path / "ds", data)
    with pytest.raises(DatalistError) as exc:
        load_datalist(root, check_files=False)
    assert fragment in str(exc.value) and "dataset.json" in str(exc.value)


def test_schema_is_valid_draft_2020_12():
    import jsonschema

    schema = json.loads(DATALIST_SCHEMA_PATH.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_check_readable_passes_good_files(seg_dataset, cls_dataset):
    assert check_readable(load_datalist(seg_dataset)) == 4
    assert check_readable(load_datalist(cls_dataset)) == 3  # int labels are not files


@pytest.mark.parametrize("kind", ["truncated_nifti", "garbage_png"])
def test_check_readable_fails_fast(seg_dataset, kind):
    if kind == "truncated_nifti":
        bad = seg_dataset / "labelsTr" / "b.nii.gz"
        data = bad.read_bytes()
        bad.write_bytes(data[: len(data) // 2])
    else:
        bad = seg_dataset / "imagesTr" / "b.png"
        bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
        write_dataset(seg_dataset, {"training": [{"image": "imagesTr/a.nii"}, {"image": "imagesTr/b.png"}]})
    entries = load_datalist(seg_dataset)  # exists, so loading succeeds ...
    with pytest.raises(InputFileError) as exc:  # ... and the header check catches it before any output
        check_readable(entries)
    assert str(bad) in str(exc.value)
    assert isinstance(exc.value, TrustMonaiError)


@pytest.mark.parametrize(
    "bad_entry",
    [{"label": "x.nii.gz"}, {"image": ""}, {"image": "a.png", "label": None}, {"image": "a.png", "label": True}, ""],
)
def test_schema_error_found_deep_in_a_long_datalist(tmp_path, bad_entry):
    """The fast path (hand check + sampled schema) still catches a bad entry far from the start."""
    (tmp_path / "a.png").write_bytes(b"x")
    entries = [{"image": "a.png", "label": 1}] * 500 + [bad_entry]
    (tmp_path / "dataset.json").write_text(json.dumps({"training": entries}))
    with pytest.raises(DatalistError, match=r"\[500\]"):
        load_datalist(tmp_path, "training", check_files=False)


def test_datalist_channels_grey_rgb_and_test_only(tmp_path):
    """The natural bundles' default ``in_channels``: from the first training image, or the first test image of a
    test-only datalist; a datalist without images is a one-line error naming it."""
    from PIL import Image

    from trust_monai.data.classification import datalist_channels

    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    Image.fromarray(np.stack([grey, grey // 2, 255 - grey], -1)).save(tmp_path / "c.png")
    cases = [
        ({"training": [{"image": "g.png", "label": 0}], "test": [{"image": "c.png", "label": 0}]}, 1),
        ({"training": [{"image": "c.png", "label": 0}], "test": [{"image": "g.png", "label": 0}]}, 3),
        ({"test": [{"image": "c.png", "label": 1}]}, 3),
    ]
    for i, (doc, channels) in enumerate(cases):
        folder = tmp_path / f"d{i}"
        folder.mkdir()
        for name in ("g.png", "c.png"):
            (folder / name).write_bytes((tmp_path / name).read_bytes())
        (folder / "dataset.json").write_text(json.dumps(doc))
        assert datalist_channels(folder) == channels
    (tmp_path / "dataset.json").write_text(json.dumps({"training": []}))
    with pytest.raises(TrustMonaiError, match="dataset.json"):
        datalist_channels(tmp_path)
