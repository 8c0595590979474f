"""DICOM series from the pydicom wheel's test files: CT_small, MR_small and the series of its DICOMDIR test tree.

Each series lands in its own folder ``series/<name>/IM0001.dcm ...`` (one folder = one series, files ordered by
InstanceNumber). The files are copied byte for byte. Nothing is labelled, so every entry is in ``test``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from trust_monai.errors import DataSourceUnavailable

from ._common import Builder, DatasetInfo, dist_version, import_source, write_datalist

__all__ = ["SINGLE_FILES", "BUILDERS"]

INSTALL_HINT = "pip install pydicom"
SINGLE_FILES = {"ct_small": "CT_small.dcm", "mr_small": "MR_small.dcm"}


def _testdata(name: str) -> Path:
    data = import_source("pydicom.data", "pydicom_samples", INSTALL_HINT)
    # download=False: the default would try the network for files not in the wheel and only warn on failure.
    path = data.get_testdata_file(name, download=False)
    if path is None:
        raise DataSourceUnavailable(
            f"pydicom test file {name} is not in the installed wheel; install with: {INSTALL_HINT}"
        )
    return Path(path)


def _locate() -> dict:
    data = import_source("pydicom.data", "pydicom_samples", INSTALL_HINT)
    # get_testdata_files only searches local files (never downloads); the DICOMDIR tree is an optional extra.
    dicomdirs = data.get_testdata_files("dicomdirtests/DICOMDIR")
    return {
        "single": {key: _testdata(name) for key, name in SINGLE_FILES.items()},
        "dicomdir": Path(dicomdirs[0]) if dicomdirs else None,
    }


def _series_of_dicomdir(dicomdir: Path) -> list[list]:
    """Instances referenced by a DICOMDIR, grouped by SeriesInstanceUID; series without pixel data are skipped."""
    from pydicom import dcmread
    from pydicom.fileset import FileSet

    groups: dict[str, list] = {}
    for inst in FileSet(dcmread(dicomdir)):
        ds = dcmread(inst.path)  # the files are a few kB: read whole to see whether pixel data is present
        if "PixelData" not in ds:  # a header-only instance is useless as an image sample
            continue
        groups.setdefault(str(ds.SeriesInstanceUID), []).append((Path(inst.path), ds))
    series = [sorted(g, key=lambda item: int(item[1].get("InstanceNumber") or 0)) for g in groups.values()]
    # Stable folder numbering: by patient, study, series number, then UID.
    return sorted(
        series,
        key=lambda g: (
            str(g[0][1].get("PatientID", "")),
            str(g[0][1].get("StudyInstanceUID", "")),
            int(g[0][1].get("SeriesNumber") or 0),
            str(g[0][1].SeriesInstanceUID),
        ),
    )


def _copy_series(out: Path, key: str, files: list[Path]) -> str:
    rel = f"series/{key}"
    (out / rel).mkdir(parents=True)
    for i, src in enumerate(files, start=1):
        shutil.copyfile(src, out / rel / f"IM{i:04d}.dcm")
    return rel


def _entry(rel: str, first, n: int, origin: str) -> dict:
    return {
        "image": rel,
        "modality": str(first.get("Modality", "")),
        "num_instances": n,
        "rows": int(first.get("Rows", 0)),
        "columns": int(first.get("Columns", 0)),
        "series_description": str(first.get("SeriesDescription", "")),
        "origin": origin,
    }


def _build(out: Path, source: dict, info: DatasetInfo) -> None:
    from pydicom import dcmread

    test = []
    for key, path in source["single"].items():
        rel = _copy_series(out, key, [path])
        test.append(_entry(rel, dcmread(path, stop_before_pixels=True), 1, f"pydicom test file {path.name}"))
    dicomdir = source["dicomdir"]
    groups = _series_of_dicomdir(dicomdir) if dicomdir is not None else []
    for k, group in enumerate(groups, start=1):
        first = group[0][1]
        key = f"dicomdir_{k:02d}_{str(first.get('Modality', 'ot')).lower()}"
        rel = _copy_series(out, key, [p for p, _ in group])
        origin = "pydicom DICOMDIR test tree: " + ", ".join(p.relative_to(dicomdir.parent).as_posix() for p, _ in group)
        test.append(_entry(rel, first, len(group), origin))
    write_datalist(
        out,
        info,
        [],
        test,
        split_rule="No labels: every series is in 'test' (for DICOM I/O and detector negatives); 'training' is empty.",
        modality={"0": "CT, MR or CR (see each entry's 'modality')"},
    )


BUILDERS = {
    "pydicom_samples": Builder(
        version=lambda: f"pydicom_samples-1-pydicom{dist_version('pydicom')}", locate=_locate, build=_build
    )
}
