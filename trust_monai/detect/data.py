"""Forgery-detection data sets made in the project from real offline images, and the dataset that reads them.

Scans (:func:`prepare_scan_forgery`): real axial slices of the MNI152 template and of the five pyradiomics scans
(``trust_monai.data.prepare('mni152_tissue_2d' / 'pyradiomics_lesions_2d')``), intensity-normalised per volume and
resized to ``size``; the fakes are made from the real slices of the same split, so the split stays by volume / slab
exactly as in the source data sets (no volume has slices on both sides):

- ``copy_move_inject`` / ``copy_move_remove``: a lesion (from its expert mask) or a tissue blob moved elsewhere, or
  covered with nearby tissue, with soft blending (:class:`~trust_monai.transforms.forgery.CopyMoveForgery`);
- ``self_blend``: the slice blended with an altered copy of itself (:class:`~trust_monai.transforms.forgery.SelfBlend`);
- ``generated``: samples of a small VAE trained on the real slices of that split only
  (:func:`~trust_monai.detect.generative.train_vae`).

With ``spatial_dims=3`` the same slices are stacked back into volumes: each real volume, and per kind one tampered
copy in which a contiguous slab of slices is replaced by its fakes (``slice_labels`` marks them). Volumes may also
get the 3D-consistent kinds (``VOLUME_KINDS``): ``lesion3d_inject`` / ``lesion3d_remove``, one lesion injected or
removed as a 3D blob across several slices with a smooth profile (:class:`~trust_monai.transforms.forgery.Lesion3D`,
the CT-GAN threat); ``slice_labels`` marks the slices it reaches.

Faces (:func:`prepare_face_forgery`): the 100 real LFW faces of ``prepare('lfw_faces')`` (same 80/20 split) versus
``self_blend`` and ``face_swap`` fakes (donor face from the same split).

Every datalist entry has ``image``, ``label`` (0 real, 1 fake), ``kind`` and ``volume`` (the group a volume score is
aggregated over). A procedural fake also names the real image it was made from (``source``) and, where the slice has
an expert lesion mask, the mask (``lesion``); ``dataset.json["synthesis"]`` records each procedural kind's transform, so
:class:`ForgeryDataset` can make a fresh fake of that kind at every draw (``resynthesize``) instead of reusing the one
fake stored per real image.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..errors import DatalistError, InputFileError
from ..utils.fileio import atomic_write_json

__all__ = [
    "SCAN_KINDS",
    "VOLUME_KINDS",
    "FACE_KINDS",
    "prepare_scan_forgery",
    "prepare_face_forgery",
    "ForgeryDataset",
    "select_kinds",
]

SCAN_KINDS = ("copy_move_inject", "copy_move_remove", "self_blend", "generated")
VOLUME_KINDS = ("lesion3d_inject", "lesion3d_remove")  # 3D-consistent: volumes only (spatial_dims=3)
FACE_KINDS = ("self_blend", "face_swap")
_SOURCES = ("pyradiomics_lesions_2d", "mni152_tissue_2d")
_VERSION = "3"
# the transforms behind the procedural kinds, with the arguments the data sets use (``dataset.json["synthesis"]``)
SCAN_SYNTHESIS = {
    "copy_move_inject": {"transform": "CopyMoveForgery", "args": {"mode": "inject"}},
    "copy_move_remove": {"transform": "CopyMoveForgery", "args": {"mode": "remove"}},
    "self_blend": {"transform": "SelfBlend", "args": {}},
}
FACE_SYNTHESIS = {
    "self_blend": {"transform": "SelfBlend", "args": {"radius": [0.25, 0.4], "center": "middle"}},
    "face_swap": {"transform": "FaceSwap", "args": {}},
}


def synthesis_transform(spec: dict):
    """The forgery transform a ``dataset.json["synthesis"]`` entry names (only the project's forgery transforms)."""
    from ..transforms import forgery

    name = spec.get("transform")
    if name not in ("CopyMoveForgery", "SelfBlend", "FaceSwap"):
        raise DatalistError(f"synthesis: unknown forgery transform {name!r}; expected CopyMoveForgery, SelfBlend or "
                            "FaceSwap")
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(spec.get("args", {})).items()}
    return getattr(forgery, name)(**args)


def _resize(a: np.ndarray, size: int, mode: str = "bilinear") -> np.ndarray:
    t = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)[None, None]
    kw = {"align_corners": False, "antialias": True} if mode == "bilinear" else {}
    return torch.nn.functional.interpolate(t, size=(size, size), mode=mode, **kw)[0, 0].numpy()


def _real_slices(size: int, min_tissue: float, max_per_volume: int | None) -> dict[str, list[dict]]:
    """Real slices per split: normalised by the volume's 0.5/99.5 percentiles, resized, with tissue only."""
    from ..data import prepare, read_image
    from ..data.datalist import load_datalist

    out: dict[str, list[dict]] = {"training": [], "test": []}
    for source in _SOURCES:
        root = prepare(source)
        for split in out:
            entries = load_datalist(root, split, keys=("image", "label"))
            by_volume: dict[str, list[dict]] = {}
            for e in entries:
                by_volume.setdefault(str(e.get("volume", "volume")), []).append(e)
            for volume, items in by_volume.items():
                arrays = [np.asarray(read_image(e["image"])[0], np.float32) for e in items]
                lo, hi = np.percentile(np.concatenate([a.ravel() for a in arrays]), [0.5, 99.5])
                kept = []
                for e, a in zip(items, arrays):
                    img = np.clip((_resize(a, size) - lo) / max(hi - lo, 1e-6), 0, 1)
                    if (img > 0.1).mean() < min_tissue:
                        continue  # an edge slice with (almost) nothing in it is neither real nor fake evidence
                    lesion = None
                    if isinstance(e.get("label"), str) and source.startswith("pyradiomics"):
                        lesion = _resize(np.asarray(read_image(e["label"])[0], np.float32), size, "nearest") > 0
                    kept.append({"image": img.astype(np.float32), "lesion": lesion, "volume": volume,
                                 "slice": int(e.get("slice", len(kept))), "source": source})
                if max_per_volume:
                    idx = np.unique(np.linspace(0, len(kept) - 1, min(max_per_volume, len(kept))).round().astype(int))
                    kept = [kept[i] for i in idx] if kept else []
                out[split] += kept
    return out


def _fakes(real: list[dict], kinds: Sequence[str], seed: int, vae_epochs: int, split: str) -> dict[str, list]:
    """One fake per real slice and kind (same order as ``real``)."""
    from .generative import train_vae

    fakes: dict[str, list] = {}
    for k, kind in enumerate(kinds):
        rs = np.random.RandomState(seed * 1000 + k)
        if kind in VOLUME_KINDS:
            continue  # made on whole volumes in _build_scans
        if kind == "generated":
            stack = torch.from_numpy(np.stack([r["image"] for r in real]))[:, None]
            vae = train_vae(stack, epochs=vae_epochs, seed=seed, desc=f"VAE ({split})")
            gen = torch.Generator().manual_seed(seed + 7)
            fakes[kind] = [s[0].numpy() for s in vae.sample(len(real), gen)]
            continue
        t = synthesis_transform(SCAN_SYNTHESIS[kind]).set_random_state(state=rs)
        fakes[kind] = []
        for r in real:
            lesion = r["lesion"] if r["lesion"] is not None and r["lesion"].any() else None
            fakes[kind].append(t(r["image"][None]) if kind == "self_blend" else t(r["image"][None], lesion)[0:1])
        fakes[kind] = [np.asarray(f, np.float32).reshape(r["image"].shape) for f, r in zip(fakes[kind], real)]
    return fakes


def _cache_folder(name: str, params: dict) -> Path:
    from ..data.cache import cache_dir

    tag = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:10]
    return cache_dir() / "detect" / f"{name}-{tag}"


def prepare_scan_forgery(
    spatial_dims: int = 2,
    size: int = 64,
    kinds: Sequence[str] = SCAN_KINDS,
    vae_epochs: int = 150,
    max_per_volume: int | None = None,
    min_tissue: float = 0.05,
    seed: int = 0,
    root: str | os.PathLike | None = None,
) -> Path:
    """Build (once, cached by its parameters) the real-versus-tampered scan data set; returns its folder.

    Args:
        spatial_dims: 2 (one NIfTI per slice) or 3 (volumes with per-slice labels).
        size: slice side after resizing.
        kinds: fake kinds to make (subset of ``SCAN_KINDS``).
        vae_epochs: training epochs of the VAE behind ``generated``.
        max_per_volume: keep at most this many evenly spaced slices per volume (tiny smoke sets).
        min_tissue: drop slices whose tissue fraction is below this.
        seed: seed of every random choice.
        root: parent folder (default: ``cache_dir()/detect``).
    """
    from ..data.cache import build_dataset_dir, is_complete

    unknown = set(kinds) - set(SCAN_KINDS) - set(VOLUME_KINDS)
    if unknown:
        raise DatalistError(f"unknown scan forgery kinds {sorted(unknown)}; choose from {SCAN_KINDS + VOLUME_KINDS}")
    if int(spatial_dims) == 2 and set(kinds) & set(VOLUME_KINDS):
        raise DatalistError(f"the 3D-consistent kinds {VOLUME_KINDS} are made on volumes: use spatial_dims=3")
    params = dict(spatial_dims=int(spatial_dims), size=int(size), kinds=list(kinds), vae_epochs=int(vae_epochs),
                  max_per_volume=max_per_volume, min_tissue=min_tissue, seed=int(seed), version=_VERSION)
    target = _cache_folder("scan_forgery", params) if root is None else Path(root) / "scan_forgery"
    version = json.dumps(params, sort_keys=True)
    if is_complete(target, version):
        return target
    return build_dataset_dir(target, version, lambda out: _build_scans(out, params))


def _build_scans(out: Path, p: dict) -> None:
    from ..data.sources._common import write_nifti
    from ..transforms.forgery import Lesion3D

    real = _real_slices(p["size"], p["min_tissue"], p["max_per_volume"])
    lists: dict[str, list] = {}
    affine = np.eye(4)
    for split, tag in (("training", "Tr"), ("test", "Ts")):
        fakes = _fakes(real[split], p["kinds"], p["seed"] + (0 if split == "training" else 100), p["vae_epochs"],
                       split)
        entries = []
        if p["spatial_dims"] == 2:
            for i, r in enumerate(real[split]):
                stem = f"{r['volume']}_z{r['slice']:03d}"
                src = f"images{tag}/real/{stem}.nii.gz"
                write_nifti(out / src, r["image"], affine)
                extra = {}
                if r["lesion"] is not None and r["lesion"].any():
                    extra["lesion"] = f"labels{tag}/{stem}.nii.gz"
                    write_nifti(out / extra["lesion"], r["lesion"].astype(np.uint8), affine)
                entries.append({"image": src, "label": 0, "kind": "real", "volume": r["volume"], "slice": r["slice"],
                                **extra})
                for kind in p["kinds"]:
                    rel = f"images{tag}/{kind}/{stem}.nii.gz" if kind != "generated" else \
                        f"images{tag}/{kind}/{split}_{i:04d}.nii.gz"
                    write_nifti(out / rel, fakes[kind][i], affine)
                    if kind == "generated":
                        entries.append({"image": rel, "label": 1, "kind": kind, "volume": f"generated:{split}:"
                                        f"{i // 16:02d}", "slice": i})
                    else:
                        entries.append({"image": rel, "label": 1, "kind": kind, "volume": f"{r['volume']}:{kind}",
                                        "slice": r["slice"], "source": src, **extra})
        else:
            rs = np.random.RandomState(p["seed"] + 11)
            by_volume: dict[str, list[int]] = {}
            for i, r in enumerate(real[split]):
                by_volume.setdefault(r["volume"], []).append(i)
            for volume, idx in by_volume.items():
                stack = np.stack([real[split][i]["image"] for i in idx], -1)
                src = f"images{tag}/real/{volume}.nii.gz"
                write_nifti(out / src, stack, affine)
                extra = {}
                lesions = [real[split][i]["lesion"] for i in idx]
                if any(m is not None and m.any() for m in lesions):
                    extra["lesion"] = f"labels{tag}/{volume}.nii.gz"
                    write_nifti(out / extra["lesion"], np.stack([np.zeros(stack.shape[:2], bool) if m is None else m
                                                                 for m in lesions], -1).astype(np.uint8), affine)
                entries.append({"image": src, "label": 0, "kind": "real", "volume": volume,
                                "slice_labels": [0] * len(idx), **extra})
                for v, kind in enumerate(k for k in p["kinds"] if k in VOLUME_KINDS):
                    t = Lesion3D(kind.split("_")[1]).set_random_state(p["seed"] * 1000 + len(entries) * 7 + v)
                    mask = None
                    if extra.get("lesion"):
                        mask = np.stack([np.zeros(stack.shape[:2], bool) if m is None else m for m in lesions], -1)
                    fake = np.asarray(t(stack[None], None if mask is None else mask[None]), np.float32)[0]
                    rel = f"images{tag}/{kind}/{volume}.nii.gz"
                    write_nifti(out / rel, fake, affine)
                    labels = [int(v > 0.1) for v in t.last_mask.max((0, 1))]
                    entries.append({"image": rel, "label": 1, "kind": kind, "volume": f"{volume}:{kind}",
                                    "slice_labels": labels, "source": src, **extra})
                for kind in (k for k in p["kinds"] if k not in VOLUME_KINDS):
                    n = len(idx)
                    length = max(1, int(round(n * rs.uniform(0.3, 0.5))))
                    start = rs.randint(0, n - length + 1)
                    fake = stack.copy()
                    for z in range(start, start + length):
                        fake[..., z] = fakes[kind][idx[z]]
                    rel = f"images{tag}/{kind}/{volume}.nii.gz"
                    write_nifti(out / rel, fake, affine)
                    labels = [int(start <= z < start + length) for z in range(n)]
                    entries.append({"image": rel, "label": 1, "kind": kind, "volume": f"{volume}:{kind}",
                                    "slice_labels": labels, **({"source": src, **extra} if kind != "generated" else {})})
        lists[split] = entries
    doc = {
        "name": "scan_forgery",
        "description": "Real MR/CT slices versus tampered or generated ones, made in trust_monai from the "
                       "mni152_tissue_2d and pyradiomics_lesions_2d sample data sets.",
        "tensorImageSize": f"{p['spatial_dims']}D",
        "split_rule": "Inherited from the sources: pyradiomics by volume (brain2 test), MNI152 by axial slab with a "
                      "gap. Fakes are made only from real slices of the same split; the VAE of 'generated' is "
                      "trained on that split's real slices only.",
        "classes": ["real", "fake"],
        "kinds": list(p["kinds"]),
        "synthesis": {k: SCAN_SYNTHESIS[k] for k in p["kinds"] if k in SCAN_SYNTHESIS},
        "parameters": p,
        "numTraining": len(lists["training"]),
        "numTest": len(lists["test"]),
        **lists,
    }
    atomic_write_json(out / "dataset.json", doc)


def prepare_face_forgery(
    kinds: Sequence[str] = FACE_KINDS,
    fakes_per_image: int = 2,
    seed: int = 0,
    max_per_split: int | None = None,
    root: str | os.PathLike | None = None,
) -> Path:
    """Build (once) the real-versus-fake face set from ``lfw_faces``: real faces, self-blended and face-swapped fakes.

    Args:
        kinds: subset of ``FACE_KINDS``.
        fakes_per_image: fakes of each kind made from each real face.
        seed: seed of every random choice.
        max_per_split: keep only the first real faces of each split (smoke sets).
        root: parent folder (default: ``cache_dir()/detect``).
    """
    from ..data.cache import build_dataset_dir, is_complete

    unknown = set(kinds) - set(FACE_KINDS)
    if unknown:
        raise DatalistError(f"unknown face forgery kinds {sorted(unknown)}; choose from {FACE_KINDS}")
    params = dict(kinds=list(kinds), fakes_per_image=int(fakes_per_image), seed=int(seed),
                  max_per_split=max_per_split, version=_VERSION)
    target = _cache_folder("face_forgery", params) if root is None else Path(root) / "face_forgery"
    version = json.dumps(params, sort_keys=True)
    if is_complete(target, version):
        return target
    return build_dataset_dir(target, version, lambda out: _build_faces(out, params))


def _build_faces(out: Path, p: dict) -> None:
    from PIL import Image

    from ..data import prepare, read_image
    from ..data.datalist import load_datalist

    root = prepare("lfw_faces")
    lists = {}
    for s, (split, folder) in enumerate((("training", "train"), ("test", "test"))):
        faces = [e for e in load_datalist(root, split, keys=("image",)) if int(e["label"]) == 1]
        faces = faces[: p["max_per_split"]] if p["max_per_split"] else faces
        arrays = [np.asarray(read_image(e["image"])[0], np.float32) / 255.0 for e in faces]
        rs = np.random.RandomState(p["seed"] + 100 * s)
        blend = synthesis_transform(FACE_SYNTHESIS["self_blend"]).set_random_state(state=rs)
        swap = synthesis_transform(FACE_SYNTHESIS["face_swap"]).set_random_state(state=rs)
        entries = []

        def save(rel, a):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)).save(out / rel)

        for i, (e, a) in enumerate(zip(faces, arrays)):
            stem = f"{int(e.get('index', i)):03d}"
            rel = f"{folder}/real/{stem}.png"
            save(rel, a)
            entries.append({"image": rel, "label": 0, "kind": "real", "volume": stem})
            for kind in p["kinds"]:
                for j in range(p["fakes_per_image"]):
                    if kind == "self_blend":
                        fake = blend(a[None])[0]
                    else:
                        donor = arrays[(i + 1 + rs.randint(len(arrays) - 1)) % len(arrays)] if len(arrays) > 1 else a
                        fake = swap(a[None], donor[None])[0]
                    rel = f"{folder}/{kind}/{stem}_{j}.png"
                    save(rel, fake)
                    entries.append({"image": rel, "label": 1, "kind": kind, "volume": f"{stem}:{kind}:{j}",
                                    "source": f"{folder}/real/{stem}.png"})
        lists[split] = entries
    atomic_write_json(out / "dataset.json", {
        "name": "face_forgery",
        "description": "Real LFW faces (skimage lfw_subset, 25x25 grey) versus self-blended and face-swapped fakes "
                       "made in trust_monai.",
        "tensorImageSize": "2D",
        "split_rule": "Inherited from lfw_faces (last 20 faces are test); face-swap donors come from the same split.",
        "classes": ["real", "fake"],
        "kinds": list(p["kinds"]),
        "synthesis": {k: FACE_SYNTHESIS[k] for k in p["kinds"]},
        "parameters": p,
        "numTraining": len(lists["training"]),
        "numTest": len(lists["test"]),
        **lists,
    })


# the dataset that reads these folders lives in .dataset (one job per file); kept importable from here
from .dataset import ForgeryDataset, select_kinds  # noqa: E402
