"""Shared fixtures of the integration tests."""

from __future__ import annotations

import pytest

from tests.integration.bundle_harness import run_bundle


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """``trained(name) -> ckpt_dir``: the bundle trained once per test session (smoke sizes, one epoch)."""
    cache: dict = {}

    def get(name: str):
        if name not in cache:
            ckpt = tmp_path_factory.mktemp(f"{name}_models")
            proc = run_bundle(name, "train", epochs=1, ckpt_dir=str(ckpt),
                              output_dir=str(tmp_path_factory.mktemp(f"{name}_train")))
            assert proc.returncode == 0, f"{name} train failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
            cache[name] = ckpt
        return cache[name]

    return get
