"""``scripts/umed_lesion3d_ideal.py``'s local-contrast measure, on volumes whose answer is known by construction."""

from __future__ import annotations

import importlib.util
import json
import tempfile
import unittest
from pathlib import Path

import nibabel as nib
import numpy as np


def _load_script():
    path = Path(__file__).resolve().parents[2] / "scripts" / "umed_lesion3d_ideal.py"
    spec = importlib.util.spec_from_file_location("umed_lesion3d_ideal", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class TestLesionContrast(unittest.TestCase):
    def test_flat_tissue_and_bright_neighbourhood(self):
        """A +0.1 cube on flat tissue reads 1.0; the same cube painted in darker tissue whose surroundings are
        already 0.1 brighter reads 0.0 (the invisible lesions the 3D docs describe)."""
        script = _load_script()
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "images").mkdir()
            (root / "labels").mkdir()
            entries = []
            for name, around in (("flat", 0.5), ("bright", 0.6)):
                x = np.full((24, 24, 24), around, np.float32)
                y = np.zeros_like(x, dtype=np.uint8)
                x[8:16, 8:16, 8:16] = 0.5 + 0.1  # base tissue 0.5 under the lesion, then the painted +0.1
                y[8:16, 8:16, 8:16] = 1
                for sub, arr in (("images", x), ("labels", y)):
                    nib.save(nib.Nifti1Image(arr, np.eye(4)), str(root / sub / f"{name}.nii.gz"))
                entries.append({"image": f"images/{name}.nii.gz", "label": f"labels/{name}.nii.gz"})
            info = {"contrast": 0.2, "brain_intensity_range": 0.5, "training": entries[:1], "test": entries[1:]}
            (root / "dataset.json").write_text(json.dumps(info))
            rows = script.lesion_contrast(root)
        self.assertEqual([(r[0], r[1]) for r in rows], [("training", "flat.nii.gz"), ("test", "bright.nii.gz")])
        self.assertAlmostEqual(rows[0][2], 1.0, places=5)
        self.assertAlmostEqual(rows[1][2], 0.0, places=5)


if __name__ == "__main__":
    unittest.main()
