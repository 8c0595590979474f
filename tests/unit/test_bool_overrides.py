"""Boolean bundle ids typed on the command line: ``--progress false`` reaches a config as the text ``"false"`` (fire
keeps JSON literals as strings), which Python reads as True. Every consumer must read it as False."""

from __future__ import annotations

from pathlib import Path

import pytest

from trust_monai.bundle import as_bool

BUNDLES = Path(__file__).resolve().parents[2] / "bundles"


@pytest.mark.parametrize("text,value", [("false", False), ("False", False), ("0", False), ("true", True),
                                        ("True", True), (" yes ", True), (False, False), (1, True)])
def test_as_bool_reads_command_line_text(text, value):
    assert as_bool(text) is value


def test_as_bool_refuses_other_text():
    with pytest.raises(ValueError, match="not a boolean"):
        as_bool("maybe")


def test_fire_passes_false_as_text():
    """The premise: what ``python -m monai.bundle run --progress false`` hands to the config."""
    import fire

    assert fire.Fire(lambda **kw: kw, command=["--progress", "false"]) == {"progress": "false"}


def test_purified_copy_check_is_off_and_reads_nothing_when_check_poisoning_is_false_text(tmp_path):
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(BUNDLES / "dvae_natural" / "configs" / "inference.json"))
    # an output folder that does not exist: building the check's dataset would fail if it were read
    parser.update({"check_poisoning": "false", "output_dir": str(tmp_path / "absent"), "defence": "dvae"})
    check = parser.get_parsed_content("check_output")
    assert check.enabled is False and check.dataset is None and check.run() is None


def test_engines_read_false_text_as_false(tmp_path):
    from trust_monai.engines.segmentation import VictimStudy
    from trust_monai.protect.poisons import AutoregressivePoison
    from trust_monai.purify.check import PoisoningCheck

    assert PoisoningCheck(None, tmp_path, enabled="false", after="true").enabled is False
    assert AutoregressivePoison(2, (1, 8, 8), fill_clipped="false").fill_clipped is False
    study = VictimStudy(tmp_path, tmp_path, tmp_path, spatial_dims=2, num_classes=2, progress="false")
    assert study.progress is False
