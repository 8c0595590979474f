"""Real-versus-tampered colour fundus photographs made from the user's copy of DRIVE.

Real: each DRIVE photograph (``prepare('drive')``: 20 training subjects, 20 test subjects, RGB) resized to ``size``
(the whole field of view) plus ``crops`` zoomed views (random ``size`` crops of the photograph at ``zoom`` times that
scale, inside the field of view), values in [0, 1], PNG. Fakes, one per real view and kind, made from it: copy-move
(``copy_move_inject``: a blob of retina moved elsewhere; ``copy_move_remove``: a region covered with retina from
nearby) and ``self_blend`` (an altered copy of the photograph blended inside a soft blob), all on the three colour
channels at once. ``dataset.json["synthesis"]`` names each kind's transform, so training can make fresh fakes
(``ForgeryDataset(resynthesize=True)`` or ``paired=True``). The split is DRIVE's, by subject: a subject's views and
fakes sit in one split; ``volume`` is the subject id, so evaluation groups and reports per held-out subject.
DRIVE is for research use; cite Staal et al., IEEE TMI 2004.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..errors import DatalistError
from ..utils.fileio import atomic_write_json

__all__ = ["FUNDUS_KINDS", "FUNDUS_SYNTHESIS", "prepare_fundus_forgery"]

FUNDUS_KINDS = ("copy_move_inject", "copy_move_remove", "self_blend")
FUNDUS_SYNTHESIS = {
    "copy_move_inject": {"transform": "CopyMoveForgery", "args": {"mode": "inject"}},
    "copy_move_remove": {"transform": "CopyMoveForgery", "args": {"mode": "remove"}},
    "self_blend": {"transform": "SelfBlend", "args": {}},
}
_VERSION = "1"


def _views(rgb: np.ndarray, fov: np.ndarray, size: int, crops: int, zoom: float, rs) -> list[np.ndarray]:
    """The whole photograph at ``size`` and ``crops`` zoomed ``size`` crops centred inside the field of view."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None].float()
    views = [F.interpolate(t, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]]
    big = int(round(size * zoom))
    tb = F.interpolate(t, size=(big, big), mode="bilinear", antialias=True, align_corners=False)[0]
    fb = F.interpolate(torch.from_numpy(fov.astype(np.float32))[None, None], size=(big, big))[0, 0].numpy() > 0.5
    inside = np.argwhere(fb[size // 2 : big - size // 2, size // 2 : big - size // 2])
    for _ in range(crops):
        r, c = inside[rs.randint(len(inside))] if len(inside) else (0, 0)
        views.append(tb[:, r : r + size, c : c + size])
    return [np.clip(v.permute(1, 2, 0).numpy(), 0, 1).astype(np.float32) for v in views]


def prepare_fundus_forgery(
    size: int = 224,
    crops: int = 3,
    zoom: float = 2.0,
    kinds: Sequence[str] = FUNDUS_KINDS,
    seed: int = 0,
    max_subjects: int | None = None,
    source: str | os.PathLike | None = None,
    root: str | os.PathLike | None = None,
) -> Path:
    """Build (once, cached by its parameters) the real-versus-tampered fundus set; returns its folder.

    Args:
        size: side of every view.
        crops: zoomed views per photograph besides the whole one.
        zoom: scale of the zoomed views relative to the whole one.
        kinds: subset of ``FUNDUS_KINDS``.
        seed: seed of every random choice.
        max_subjects: keep only the first subjects of each split (smoke sets).
        source: the user's copy of DRIVE (default ``$TRUST_MONAI_DRIVE`` or an existing ``prepare('drive')``).
        root: parent folder (default: ``cache_dir()/detect``).
    """
    from ..data.cache import build_dataset_dir, is_complete
    from .data import _cache_folder

    unknown = set(kinds) - set(FUNDUS_KINDS)
    if unknown:
        raise DatalistError(f"unknown fundus forgery kinds {sorted(unknown)}; choose from {FUNDUS_KINDS}")
    params = dict(size=int(size), crops=int(crops), zoom=float(zoom), kinds=list(kinds), seed=int(seed),
                  max_subjects=max_subjects, version=_VERSION)
    target = _cache_folder("fundus_forgery", params) if root is None else Path(root) / "fundus_forgery"
    version = json.dumps(params, sort_keys=True)
    if is_complete(target, version):
        return target
    return build_dataset_dir(target, version, lambda out: _build(out, params, source))


def _build(out: Path, p: dict, source) -> None:
    from PIL import Image

    from ..data import prepare, read_image
    from ..data.datalist import load_datalist
    from .data import synthesis_transform

    drive = prepare("drive", source=source)
    lists = {}
    for s, (split, tag) in enumerate((("training", "Tr"), ("test", "Ts"))):
        entries = load_datalist(drive, split, keys=("image", "fov"))
        entries = entries[: p["max_subjects"]] if p["max_subjects"] else entries
        rs = np.random.RandomState(p["seed"] + 100 * s)
        makers = {k: synthesis_transform(FUNDUS_SYNTHESIS[k]).set_random_state(state=rs) for k in p["kinds"]}
        rows = []

        def save(rel, a):
            (out / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(np.rint(a * 255), 0, 255).astype(np.uint8)).save(out / rel)

        for e in entries:
            subject = str(e.get("subject", Path(e["image"]).stem))
            rgb = np.asarray(read_image(e["image"])[0], np.float32)
            rgb = rgb / 255.0 if rgb.max() > 1 else rgb
            fov = np.asarray(read_image(e["fov"])[0]) > 0
            for v, view in enumerate(_views(rgb, fov, p["size"], p["crops"], p["zoom"], rs)):
                rel = f"images{tag}/real/{subject}_{v}.png"
                save(rel, view)
                rows.append({"image": rel, "label": 0, "kind": "real", "volume": subject})
                chw = view.transpose(2, 0, 1)
                for kind, t in makers.items():
                    fake = np.asarray(t(chw) if kind == "self_blend" else t(chw, None), np.float32)
                    frel = f"images{tag}/{kind}/{subject}_{v}.png"
                    save(frel, fake.transpose(1, 2, 0))
                    rows.append({"image": frel, "label": 1, "kind": kind, "volume": f"{subject}:{kind}",
                                 "source": rel})
        lists[split] = rows
    atomic_write_json(out / "dataset.json", {
        "name": "fundus_forgery",
        "description": "Real DRIVE colour fundus photographs (whole and zoomed views) versus copy-move and "
                       "self-blended fakes made from them in trust_monai.",
        "tensorImageSize": "2D",
        "split_rule": "DRIVE's standard split by subject (training 21-40, test 01-20); a subject's views and fakes "
                      "stay in its split; 'volume' is the subject id.",
        "licence": "DRIVE: research use only; cite Staal et al., IEEE TMI 2004",
        "classes": ["real", "fake"],
        "kinds": list(p["kinds"]),
        "synthesis": {k: FUNDUS_SYNTHESIS[k] for k in p["kinds"]},
        "parameters": p,
        "numTraining": len(lists["training"]),
        "numTest": len(lists["test"]),
        **lists,
    })
