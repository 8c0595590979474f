"""Datalist entries stay inside the dataset folder: every way out is refused unless ``allow_outside=True``.

(tests/data/test_datalist.py covers absolute paths, ``..`` escapes and a symlinked folder; these add the rest.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from parameterized import parameterized

from trust_monai.data.datalist import load_datalist
from trust_monai.errors import DatalistError, InputFileError


def _setup(tmp: Path, entries, section: str = "training") -> tuple[Path, Path]:
    root, outside = tmp / "ds", tmp / "private"
    (root / "img").mkdir(parents=True)
    outside.mkdir()
    (root / "img" / "a.nii").write_bytes(b"inside")
    (outside / "secret.nii").write_bytes(b"outside")
    (root / "dataset.json").write_text(json.dumps({section: entries}))
    return root, outside


def _link(link: Path, target: Path):
    try:
        link.symlink_to(target)
    except OSError:
        pytest.skip("symlinks not supported here")


@parameterized.expand([
    ("label_dotdot", [{"image": "img/a.nii", "label": "../private/secret.nii"}], "training[0].label"),
    ("label_absolute", [{"image": "img/a.nii", "label": "@OUTSIDE@/secret.nii"}], "training[0].label"),
    ("bare_string_entry", ["../private/secret.nii"], "training[0].image"),
    ("dotdot_after_inside_dirs", [{"image": "img/../img/../../private/secret.nii"}], "training[0].image"),
    ("double_slash_absolute", [{"image": "/@OUTSIDE@/secret.nii"}], "training[0].image"),
])
def test_escape_refused_unless_allowed(_name, entries, where, tmp_path=None):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        text = json.dumps(entries).replace("@OUTSIDE@", str(tmp / "private"))
        root, outside = _setup(tmp, json.loads(text))
        with pytest.raises(DatalistError) as exc:
            load_datalist(root)
        assert where in str(exc.value)
        entry = load_datalist(root, allow_outside=True)[0]
        assert Path(entry.get("label", entry["image"])).resolve() == (outside / "secret.nii").resolve()


def test_symlinked_file_leaving_the_folder_refused(tmp_path):
    root, outside = _setup(tmp_path, [{"image": "img/link.nii"}])
    _link(root / "img" / "link.nii", outside / "secret.nii")
    with pytest.raises(DatalistError, match="outside the dataset folder"):
        load_datalist(root)
    assert load_datalist(root, allow_outside=True)[0]["image"] == str(root / "img" / "link.nii")


def test_symlink_chain_leaving_the_folder_refused(tmp_path):
    """A link to a link inside the dataset that points outside: resolved all the way."""
    root, outside = _setup(tmp_path, [{"image": "img/first.nii"}])
    _link(root / "img" / "second.nii", outside / "secret.nii")
    _link(root / "img" / "first.nii", root / "img" / "second.nii")
    with pytest.raises(DatalistError, match="outside the dataset folder"):
        load_datalist(root)


def test_symlink_inside_the_folder_is_fine_and_keeps_its_name(tmp_path):
    root, _ = _setup(tmp_path, [{"image": "img/alias.nii"}])
    _link(root / "img" / "alias.nii", root / "img" / "a.nii")
    assert load_datalist(root)[0]["image"] == str(root / "img" / "alias.nii")


def test_symlink_loop_refused(tmp_path):
    root, _ = _setup(tmp_path, [{"image": "loop/a.nii"}])
    _link(root / "loop", root / "loop")
    with pytest.raises(DatalistError, match="training\\[0\\].image"):
        load_datalist(root, allow_outside=True)


def test_nul_byte_refused(tmp_path):
    root, _ = _setup(tmp_path, [{"image": "img/a\x00.nii"}])
    for allow in (False, True):
        with pytest.raises(DatalistError, match="NUL"):
            load_datalist(root, allow_outside=allow)


def test_tilde_is_not_the_home_folder(tmp_path):
    root, _ = _setup(tmp_path, [{"image": "~/.bashrc"}])
    with pytest.raises(InputFileError) as exc:
        load_datalist(root)
    assert exc.value.path == str(root / "~" / ".bashrc")


def test_dataset_folder_itself_a_symlink_is_fine(tmp_path):
    root, _ = _setup(tmp_path, [{"image": "img/a.nii"}])
    _link(tmp_path / "alias", root)
    assert load_datalist(tmp_path / "alias")[0]["image"] == str(tmp_path / "alias" / "img" / "a.nii")


def test_bundle_run_refuses_escaping_datalist_before_writing(tmp_path):
    """The case writer (every data-writing bundle) stops on an escaping entry with nothing written."""
    import nibabel as nib

    from trust_monai.engines.case_writer import CaseWriter

    root, outside = _setup(tmp_path, [])
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 1), np.float32), np.eye(4)), root / "img" / "ok.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 1), np.float32), np.eye(4)), outside / "x.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"training": [{"image": "img/ok.nii.gz"},
                                                                 {"image": "../private/x.nii.gz"}]}))
    out = tmp_path / "out"
    with pytest.raises(DatalistError, match="training\\[1\\].image"):
        CaseWriter(root, out, lambda im, meta, e: (im, {}), bundle="test", progress=False).run()
    assert not out.exists()
    assert sorted(os.listdir(outside)) == ["secret.nii", "x.nii.gz"]
