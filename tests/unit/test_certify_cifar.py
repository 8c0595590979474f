"""CIFAR-10 loader on tiny files written in torchvision's on-disk format (no CIFAR ships offline)."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from trust_monai.engines.certify import load_cifar10
from trust_monai.errors import InputFileError


def _write_batch(path, n, seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
    labels = [int(v) for v in rng.integers(0, 10, size=n)]
    with open(path, "wb") as f:  # what torchvision's CIFAR10 reads: a pickled dict per batch
        pickle.dump({"batch_label": "testing batch 1 of 1", "labels": labels, "data": data,
                     "filenames": [f"img_{i}.png" for i in range(n)]}, f, protocol=2)
    return data, labels


def test_loads_test_and_train_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    data, labels = _write_batch(folder / "test_batch", 5, 0)
    for i in range(1, 6):
        _write_batch(folder / f"data_batch_{i}", 3, i)
    x, y = load_cifar10(tmp_path, train=False)
    assert x.shape == (5, 3, 32, 32) and x.dtype == np.uint8 and y.tolist() == labels
    # channel-first: the first 1024 values of a row are the red plane
    assert np.array_equal(x[0, 0].ravel(), data[0, :1024])
    xt, yt = load_cifar10(tmp_path, train=True)
    assert xt.shape == (15, 3, 32, 32) and yt.shape == (15,)


def test_missing_and_tampered_batches(tmp_path):
    with pytest.raises(InputFileError, match="test_batch"):
        load_cifar10(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    with open(folder / "test_batch", "wb") as f:
        pickle.dump({"data": Evil(), "labels": [0]}, f)
    with pytest.raises(InputFileError, match="refused"):
        load_cifar10(tmp_path)
