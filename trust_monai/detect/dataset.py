"""The dataset that reads a real-versus-fake datalist: 2D images, volumes, their slices with neighbours (2.5D), and
fresh or paired fakes made at every draw.

- ``context=k`` (2.5D): every slice of a volume carries its ``k`` neighbours on each side as extra channels (the slice
  and its two neighbours for ``k=1``, a natural fit for an RGB backbone). Volume ends repeat the nearest slice; a
  volume with fewer than ``2k + 1`` slices is still scored, with its neighbour channels repeated, and a warning says
  so. :func:`slices_with_context` does the same for a whole volume at scoring time.
- ``resynthesize``: each procedural fake is made afresh from its real ``source`` at every draw (new blending mask,
  position and alteration, as "Detecting Deepfakes with Self-Blended Images" trains); under ``context`` only the middle
  slice is tampered and the neighbours stay real, the per-slice attacker's trace.
- ``paired``: an item is a real image *and* a fresh fake made from it by a random procedural kind, so every batch
  holds each real beside its own fake (:func:`paired_collate` flattens the pairs): the detector cannot tell them apart
  by anatomy, only by the tampering trace.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..bundle import as_bool
from ..errors import DatalistError, InputFileError

__all__ = ["ForgeryDataset", "select_kinds", "slices_with_context", "paired_collate"]

logger = logging.getLogger("trust_monai.detect")
_PICTURE = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def select_kinds(entries: list[dict], kinds: Sequence[str] | None) -> list[dict]:
    """Real entries plus the fakes whose ``kind`` is in ``kinds`` (``None`` or empty: all)."""
    if not kinds:
        return list(entries)
    return [e for e in entries if e.get("kind", "real") == "real" or int(e.get("label", 0)) == 0 or
            e.get("kind") in set(kinds)]


def _context_index(depth: int, z: int, k: int) -> list[int]:
    return [min(max(z + d, 0), depth - 1) for d in range(-k, k + 1)]


def slices_with_context(volume: torch.Tensor, context: int = 1, name: str = "volume") -> torch.Tensor:
    """Every slice of ``volume`` ``(C, H, W, D)`` with its ``context`` neighbours per side as channels.

    Returns ``(D, C * (2 * context + 1), H, W)``, channels ordered ``z - k ... z + k``; the ends repeat the nearest
    slice. A volume with fewer than ``2 * context + 1`` slices is scored with repeated neighbours and a warning.
    """
    depth = volume.shape[-1]
    if context <= 0:
        return volume.permute(3, 0, 1, 2)
    if depth < 2 * context + 1:
        logger.warning("%s: %d slice(s), fewer than %d: the neighbour channels repeat the nearest slice", name,
                       depth, 2 * context + 1)
    return torch.stack([torch.cat([volume[..., j] for j in _context_index(depth, z, context)], 0)
                        for z in range(depth)])


def paired_collate(batch: list[dict]) -> dict:
    """Collate paired items (``image`` ``(2, C, H, W)``, ``label`` ``(2,)``) into one flat batch of ``2B``."""
    return {"image": torch.cat([b["image"] for b in batch]), "label": torch.cat([b["label"] for b in batch]),
            "index": torch.tensor([b["index"] for b in batch]).repeat_interleave(2)}


class ForgeryDataset(torch.utils.data.Dataset):
    """A datalist section of real / fake images, every file header checked first, then decoded into memory.

    Items: ``image`` (float ``(C, H, W)`` for 2D, ``(1, H, W, D)`` for a volume, values in [0, 1]), ``label`` (int,
    -1 when the datalist has none), ``kind``, ``volume``, ``path``, ``rel``.

    Args:
        dataset_dir: folder with ``dataset.json``.
        section: datalist section, or a list of sections (those present are read).
        kinds: fake kinds to keep (real images are always kept); ``None``: all.
        unroll: split volumes into slices (training on slices of a 3D set; per-slice labels from ``slice_labels``).
        max_samples: keep at most this many entries, evenly spaced (0: all).
        augment: random horizontal flips (training).
        resynthesize: every draw of a procedural fake (a kind in ``dataset.json["synthesis"]``) is made afresh from
            its ``source`` real image (and ``lesion`` mask) by that kind's transform, instead of reading the one
            stored fake. Needs 2D images or ``unroll``; other kinds (``generated``, 3D-consistent) are read as stored.
        context: neighbours per side stacked as channels on unrolled slices (1: 2.5D, three channels).
        paired: items are the real images only, each returned beside a fresh fake of it (a random procedural kind
            among ``kinds``); use :func:`paired_collate` in the DataLoader.
    """

    def __init__(self, dataset_dir, section: str = "training", kinds: Sequence[str] | None = None,
                 unroll: bool = False, max_samples: int | None = 0, augment: bool = False,
                 resynthesize: bool = False, context: int = 0, paired: bool = False):
        from ..data.datalist import check_readable, load_datalist
        from ..data.io import read_image
        from .data import synthesis_transform

        self.dataset_dir = Path(dataset_dir).resolve()
        unroll, augment, resynthesize, paired = as_bool(unroll), as_bool(augment), as_bool(resynthesize), as_bool(paired)
        self.context, self.paired = int(context), paired
        sections = [section] if isinstance(section, str) else list(section)
        want_doc = len(sections) > 1 or resynthesize or paired
        doc = json.loads((self.dataset_dir / "dataset.json").read_text()) if want_doc and (
            self.dataset_dir / "dataset.json").is_file() else {}
        if len(sections) > 1:
            # several sections: those the datalist has (a screening list may hold only "test")
            sections = [s for s in sections if isinstance(doc.get(s), list)] or sections[:1]
        self.synthesis: dict = {}
        keys: tuple[str, ...] = ("image",)
        if resynthesize or paired:
            self.synthesis = {k: synthesis_transform(v) for k, v in dict(doc.get("synthesis") or {}).items()
                              if not kinds or k in kinds}
            if not self.synthesis:
                raise DatalistError(f"{self.dataset_dir / 'dataset.json'}: resynthesize / paired need a 'synthesis' "
                                    "section with a procedural kind among the kinds trained on (made by "
                                    "prepare_scan_forgery / prepare_face_forgery); train with both false")
            keys = ("image", "source", "lesion")
        entries = []
        for s in sections:
            entries += load_datalist(self.dataset_dir, s, keys=keys)
        entries = select_kinds(entries, kinds)
        if paired:
            entries = [e for e in entries if int(e.get("label", 0)) == 0]
        if max_samples and int(max_samples) > 0 and len(entries) > int(max_samples):
            idx = np.unique(np.linspace(0, len(entries) - 1, int(max_samples)).round().astype(int))
            entries = [entries[i] for i in idx]
        if not entries:
            raise DatalistError(f"{self.dataset_dir / 'dataset.json'}: no '{section}' entries of kinds {kinds}")
        check_readable(entries, keys=keys)  # every file, before any is decoded or any output is written
        self.augment = augment
        self.items: list[dict] = []
        self._arrays: dict[str, np.ndarray] = {}  # sources and lesion masks of fresh fakes, by path
        for e in entries:
            arr, _ = read_image(e["image"])
            img = self._to_unit(np.asarray(arr, np.float32), e["image"])
            label = int(e["label"]) if "label" in e else -1
            base = {"label": label, "kind": str(e.get("kind", "real" if label == 0 else "unknown")),
                    "volume": str(e.get("volume", Path(e["image"]).name)), "path": e["image"],
                    "rel": Path(e["image"]).relative_to(self.dataset_dir).as_posix()}
            if label == 0 and self.synthesis:
                self._arrays[e["image"]] = img
                base["lesion"] = e.get("lesion") if isinstance(e.get("lesion"), str) else None
            if label == 1 and base["kind"] in self.synthesis and isinstance(e.get("source"), str):
                if img.ndim == 3 and not unroll:
                    raise DatalistError(f"{e['image']}: resynthesize makes 2D fakes; train on volumes with "
                                        "unroll=true")
                base["source"], base["lesion"] = e["source"], e.get("lesion")
            # a 3D array is a volume, except in a picture file, where the last axis holds the colour channels
            picture = Path(e["image"]).suffix.lower() in _PICTURE
            if img.ndim == 3 and not picture and unroll:
                labels = e.get("slice_labels") or [label] * img.shape[-1]
                if self.context and img.shape[-1] < 2 * self.context + 1:
                    logger.warning("%s: %d slice(s), fewer than %d: the neighbour channels repeat the nearest slice",
                                   base["rel"], img.shape[-1], 2 * self.context + 1)
                for z in range(img.shape[-1]):
                    self.items.append({**base, "image": torch.from_numpy(self._stack(img, z)),
                                       "label": int(labels[z]), "kind": base["kind"] if labels[z] else "real",
                                       "slice": z, **({} if labels[z] else {"source": None})})
            elif img.ndim == 3 and picture:  # an RGB(A) picture: channels first
                self.items.append({**base, "image": torch.from_numpy(np.ascontiguousarray(
                    img[..., :3].transpose(2, 0, 1)))})
            else:
                self.items.append({**base, "image": torch.from_numpy(img[None].copy()),
                                   "slice_labels": e.get("slice_labels")})
        # face-swap donors: the real images of these sections, found once rather than on every draw
        self._reals = [it for it in self.items if it["label"] == 0] if self.synthesis else []

    def _stack(self, vol: np.ndarray, z: int, middle: np.ndarray | None = None) -> np.ndarray:
        """Slice ``z`` of ``vol`` ``(H, W, D)`` with ``context`` neighbours per side, ``(2k + 1, H, W)``; ``middle``
        replaces slice ``z`` (a fresh fake beside real neighbours)."""
        idx = _context_index(vol.shape[-1], z, self.context)
        planes = [vol[..., j] for j in idx]
        if middle is not None:
            planes[self.context] = middle
        return np.ascontiguousarray(np.stack(planes), np.float32)

    @staticmethod
    def _to_unit(a: np.ndarray, path: str) -> np.ndarray:
        """Values into [0, 1]: 8-bit pictures / 255, already-normalised data as is, anything else by its range."""
        if a.ndim not in (2, 3):
            raise InputFileError(path, f"expected a 2D image or a 3D volume, got shape {a.shape}")
        lo, hi = float(a.min()), float(a.max())
        if lo >= 0 and hi <= 1:
            return a
        if lo >= 0 and hi <= 255 and path.lower().endswith(".png"):
            return a / 255.0
        lo, hi = np.percentile(a, [0.5, 99.5])
        return np.clip((a - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)

    @property
    def labels(self) -> list[int]:
        return [it["label"] for it in self.items]

    def class_weights(self) -> torch.Tensor:
        """Inverse class frequencies (real, fake), so each class weighs the same in the loss."""
        counts = torch.bincount(torch.tensor([max(lb, 0) for lb in self.labels]), minlength=2).float().clamp(min=1)
        return counts.sum() / (2 * counts)

    def balanced_sampler(self, num_samples: int | None = None, seed: int = 0):
        """Draw real and fake equally often: ``num_samples`` (default twice the smaller class) per epoch, with
        replacement (for ``paired`` data, where every item is a pair: each real once per epoch, shuffled). Under
        ``torchrun`` each rank draws its ``1 / world`` share with its own seed."""
        from ..utils.dist import rank_world

        rank, world = rank_world()
        gen = torch.Generator().manual_seed(int(seed) + rank)
        if self.paired:
            n = max(1, (int(num_samples) if num_samples else len(self.items)) // world)
            return torch.utils.data.RandomSampler(self, replacement=True, num_samples=n, generator=gen)
        labels = torch.tensor([max(lb, 0) for lb in self.labels])
        counts = torch.bincount(labels, minlength=2).float().clamp(min=1)
        n = int(num_samples) if num_samples else int(2 * counts.min().item())
        n = max(1, n // world)
        return torch.utils.data.WeightedRandomSampler((1.0 / counts)[labels].double(), n, replacement=True,
                                                      generator=gen)

    def __len__(self) -> int:
        return len(self.items)

    def _array(self, path: str, lesion: bool = False) -> np.ndarray:
        if path not in self._arrays:
            from ..data.io import read_image

            a = np.asarray(read_image(path)[0], np.float32)
            self._arrays[path] = a > 0 if lesion else self._to_unit(a, path)
        return self._arrays[path]

    def _fake_of(self, source: str, kind: str, z: int | None, lesion_path: str | None) -> np.ndarray:
        """A new fake of ``kind`` from the real image ``source`` (slice ``z`` of a volume, neighbours kept real)."""
        from ..transforms.forgery import CopyMoveForgery, FaceSwap

        pick = (lambda a: a[..., z]) if z is not None else (lambda a: a)
        src = self._array(source)
        x = pick(src)[None] if src.ndim == 2 or z is not None else np.ascontiguousarray(src[..., :3].transpose(2, 0, 1))
        t = self.synthesis[kind]
        t.set_random_state(int(torch.randint(2**31 - 1, ())))  # torch's generator: seeded per worker and epoch
        if isinstance(t, FaceSwap):
            donors = [it for it in self._reals if it["path"] != source]
            out = t(x, donors[int(torch.randint(len(donors), ()))]["image"].numpy() if donors else x)
        elif isinstance(t, CopyMoveForgery):
            lesion = pick(self._array(lesion_path, lesion=True))[None] if lesion_path else None
            out = t(x, lesion if lesion is not None and lesion.any() else None)
        else:
            out = t(x)
        out = np.asarray(out, np.float32)
        if z is not None and self.context:
            return self._stack(src, z, middle=out[0])
        return np.ascontiguousarray(out)

    def __getitem__(self, i: int) -> dict:
        # tensors and the index only, so the default collate works; the rest is in ``self.items[index]``
        item = self.items[i]
        flip = self.augment and bool(torch.rand(()) < 0.5)
        if self.paired:
            kinds = sorted(self.synthesis)
            kind = kinds[int(torch.randint(len(kinds), ()))]
            fake = torch.from_numpy(self._fake_of(item["path"], kind, item.get("slice"), item.get("lesion")))
            img = torch.stack([item["image"], fake.reshape(item["image"].shape)])
            return {"image": img.flip(-1) if flip else img, "label": torch.tensor([0, 1]), "index": i}
        if item.get("source"):
            img = torch.from_numpy(self._fake_of(item["source"], item["kind"], item.get("slice"), item.get("lesion")))
        else:
            img = item["image"]
        return {"image": img.flip(-1) if flip else img, "label": item["label"], "index": i}
