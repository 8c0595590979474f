"""CaseWriter under torchrun, simulated in one process: a rank's manifest file holds only its own cases, so a stale
record of another rank's case cannot override that rank's newer one when rank 0 merges.
(tests/integration/test_distributed.py runs real 2-process protections.)"""

from __future__ import annotations

import json

import pytest

from trust_monai.engines.case_writer import CaseWriter
from trust_monai.errors import CaseError, CasesFailed
from trust_monai.utils import dist

from .test_output_safety import _dataset


class _FailOn:
    """Adds 1 to every image; raises a CaseError for the images whose name is in ``bad``."""

    def __init__(self, bad=()):
        self.bad = set(bad)

    def __call__(self, image, meta, entry):
        if entry["image"].rsplit("/", 1)[-1] in self.bad:
            raise CaseError(f"{entry['image']}: bad case")
        return image + 1.0, {"added": 1.0}


def _run_as(monkeypatch, rank: int, world: int, data, out, processor) -> None:
    """One rank's CaseWriter run; barriers are no-ops without a process group, so ranks run one after the other."""
    monkeypatch.setattr(dist, "init_from_env", lambda device=None: (rank, world))
    CaseWriter(data, out, processor, bundle="test", progress=False, seed=0).run()


def test_rank_file_holds_only_its_cases_and_stale_record_does_not_win_merge(tmp_path, monkeypatch):
    data, out = _dataset(tmp_path / "data", 2), tmp_path / "out"
    # a single-process run fails case c0: manifest.json records c0 as an error, c1 as done
    with pytest.raises(CasesFailed):
        _run_as(monkeypatch, 0, 1, data, out, _FailOn({"c0.nii.gz"}))
    # the sharded rerun: rank 1 (case c1, already done) first, then rank 0 redoes c0 and merges. Rank 1 reads the
    # merged manifest before rank 0 wrote it (no barrier here), so it still sees the old error: expected.
    with pytest.raises(CasesFailed):
        _run_as(monkeypatch, 1, 2, data, out, _FailOn())
    rank1 = json.loads((out / "manifest.rank1.json").read_text())["cases"]
    assert [c["input"].rsplit("/", 1)[-1] for c in rank1] == ["c1.nii.gz"], "rank 1's file carries another's case"
    _run_as(monkeypatch, 0, 2, data, out, _FailOn())  # no CasesFailed: c0's new record wins the merge
    cases = json.loads((out / "manifest.json").read_text())["cases"]
    assert [(c["input"].rsplit("/", 1)[-1], c["status"]) for c in cases] == [("c0.nii.gz", "done"),
                                                                            ("c1.nii.gz", "done")]
    assert not list(out.glob("manifest.rank*.json"))



def test_single_process_rerun_after_killed_sharded_run_keeps_its_newer_records(tmp_path, monkeypatch):
    """A sharded run killed before its merge leaves a rank file holding an error for case c0. A one-process rerun
    redoes c0; its new record must stand, not the rank file's stale error."""
    data, out = _dataset(tmp_path / "data", 2), tmp_path / "out"
    with pytest.raises(CasesFailed):
        _run_as(monkeypatch, 0, 1, data, out, _FailOn({"c0.nii.gz"}))
    doc = json.loads((out / "manifest.json").read_text())
    doc["cases"] = [c for c in doc["cases"] if c["input"].endswith("c0.nii.gz")]
    assert [c["status"] for c in doc["cases"]] == ["error"]
    (out / "manifest.rank0.json").write_text(json.dumps(doc))  # what the killed rank 0 left
    _run_as(monkeypatch, 0, 1, data, out, _FailOn())  # no CasesFailed: the redone c0 is recorded as done
    cases = json.loads((out / "manifest.json").read_text())["cases"]
    assert [(c["input"].rsplit("/", 1)[-1], c["status"]) for c in cases] == [("c0.nii.gz", "done"),
                                                                            ("c1.nii.gz", "done")]
    assert not list(out.glob("manifest.rank*.json"))
