"""The victim study (trust_monai.engines.victim): every row says what its victim really trained on.

Issue 25 asked whether a victim that ignored a poison had trained on the poisoned PNGs at all. VictimEvaluation now
compares the training images each victim loads with the clean ones (matched by relative path) and records the
change in ``metrics.csv``; a "poisoned" copy identical to the clean data is logged as a warning.
"""

from __future__ import annotations

import csv
import json
import math
import unittest
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from trust_monai.data.classification import ImageClassificationDataset
from trust_monai.engines.victim import VictimEvaluation, training_change


def _write(root: Path, images: np.ndarray, labels: list[int], n_test: int) -> Path:
    """A dataset folder: the last ``n_test`` images are the test split."""
    d = {"training": [], "test": [], "classes": ["a", "b"]}
    for i, (a, y) in enumerate(zip(images, labels)):
        sec = "test" if i >= len(images) - n_test else "training"
        rel = f"{sec}/{i:03d}.png"
        (root / sec).mkdir(parents=True, exist_ok=True)
        Image.fromarray(a).save(root / rel)
        d[sec].append({"image": rel, "label": int(y)})
    (root / "dataset.json").write_text(json.dumps(d))
    return root


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(64, 2)

    def forward(self, x):
        return self.fc(x.flatten(1))


class TestVictimEvaluationRecordsTheChange(unittest.TestCase):
    def setUp(self):
        import tempfile

        self.tmp = Path(tempfile.mkdtemp())
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 200, size=(30, 8, 8), dtype=np.uint8)
        self.labels = [i % 2 for i in range(30)]
        self.clean = _write(self.tmp / "clean", self.images, self.labels, n_test=10)
        poisoned = self.images.astype(np.int16)
        poisoned[:20, :4] += 8  # training images only: +8/255 on the top half
        self.poisoned = _write(self.tmp / "poisoned", poisoned.clip(0, 255).astype(np.uint8), self.labels, n_test=10)
        self.same = _write(self.tmp / "same", self.images, self.labels, n_test=10)

    def test_training_change_matches_by_path(self):
        c = ImageClassificationDataset(self.clean, "training", None, 1, False)
        p = ImageClassificationDataset(self.poisoned, "training", None, 1, False)
        ch = training_change(c, p)
        self.assertEqual(ch["max_abs_change"], 8.0)
        self.assertAlmostEqual(ch["changed_fraction"], 0.5)  # top half of every training image
        self.assertAlmostEqual(ch["mean_abs_change"], 4.0)
        self.assertEqual(training_change(c, c)["max_abs_change"], 0.0)
        t = ImageClassificationDataset(self.clean, "test", None, 1, False)  # other paths: nothing matched
        self.assertTrue(math.isnan(training_change(c, t)["mean_abs_change"]))

    def test_metrics_csv_records_change_and_identical_copy_warns(self):
        ev = VictimEvaluation(self.clean, {"poisoned": str(self.poisoned), "same": str(self.same)}, self.tmp / "out",
                              network_factory=_Tiny, epochs=1, batch_size=8, progress=False)
        with self.assertLogs("trust_monai.ue_natural", level="WARNING") as logs:
            final = ev.run()
        self.assertEqual(set(final), {"clean", "poisoned", "same"})
        self.assertTrue(any("same" in m and "identical" in m for m in logs.output))
        self.assertFalse(any("victim[poisoned]" in m for m in logs.output if "WARNING" in m))
        rows = {r["condition"]: r for r in csv.DictReader((self.tmp / "out/eval/metrics.csv").open())}
        self.assertEqual(rows["poisoned"]["max_abs_change"], "8")
        self.assertAlmostEqual(float(rows["poisoned"]["mean_abs_change"]), 4.0)
        self.assertEqual(float(rows["same"]["changed_fraction"]), 0.0)
        self.assertEqual(float(rows["clean"]["max_abs_change"]), 0.0)
        self.assertIn("4.000 / 8", (self.tmp / "out/eval/metrics.md").read_text())
        torch.testing.assert_close(torch.tensor(float(rows["poisoned"]["clean_test_acc"])),
                                   torch.tensor(final["poisoned"]), atol=1e-4, rtol=0)


if __name__ == "__main__":
    unittest.main()
