"""Certify any MONAI bundle's model: ``trust-monai certify --bundle DIR --input IMAGES --output OUT``.

``DIR`` is a bundle in MONAI model-zoo layout: ``configs/inference.json`` (or ``.yaml``) with a ``network_def``, the
weights in ``models/model.pt`` (a plain state dict, or one under ``"model"`` / ``"state_dict"``), and, when the
config has one, its ``preprocessing`` transform (a dict transform on ``{"image": path}``; without one, images are
loaded, made channel-first and scaled to [0, 1]). The network becomes the base classifier of randomized smoothing
(:class:`~trust_monai.certify.Smooth`, RS): classification networks (logits ``(B, K)``) get a class and a certified
L2 radius per image, in any of the modes ``fixed`` (Cohen et al.'s CERTIFY), ``decide`` (certified at ``--radius``?)
or ``adaptive`` (input-specific sample size); segmentation networks (logits ``(B, K, *spatial)``) get per-pixel
certified labels (:class:`~trust_monai.certify.SegmentationSmooth`, fixed mode: the sequential rules are per input,
see its note).

What the certificate means for a model that was not trained with noise: the radius certifies the *smoothed*
classifier ``g(x) = argmax_c P(f(x + e) = c)``, ``e ~ N(0, sigma^2 I)`` in the units of the preprocessed input, not
the network itself. A network never trained on noisy inputs usually predicts noise-dominated classes under
``sigma``-sized noise, so ``g`` is often wrong or undecided: expect many abstentions and small radii, growing with a
smaller ``sigma`` (at the price of smaller radii, which scale with ``sigma``). ``--noise_finetune_epochs E`` first
fine-tunes a copy of the network for ``E`` epochs on the ``training`` section of ``--train`` (a ``dataset.json``)
with Gaussian noise of the same ``sigma`` (Cohen et al.'s training) and certifies the fine-tuned copy (saved as
``OUT/model_noise_finetuned.pt``); the bundle folder is never written.

Outputs: ``OUT/certify.csv`` (one row per image: path, prediction, label when known, correct, radius, mode,
samples_used, seconds), ``OUT/summary.json``; segmentation adds ``OUT/labels/<name>.npy`` (abstain = -1).
Bad inputs (no ``network_def``, no weights, weights that do not fit, a network that does not accept the images,
bad sampling settings) stop with one clear error before any sampling.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import time
from pathlib import Path

import numpy as np

from ..errors import TrustMonaiError
from ..utils.fileio import atomic_write_text

__all__ = ["certify_bundle", "load_bundle_network"]

logger = logging.getLogger("trust_monai.certify")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".nrrd", ".mha", ".npy")


def _config_file(bundle: Path) -> Path:
    for name in ("inference.json", "inference.yaml", "inference.yml"):
        if (bundle / "configs" / name).is_file():
            return bundle / "configs" / name
    raise TrustMonaiError(f"{bundle}: no configs/inference.json (a MONAI model-zoo bundle has one)")


def load_bundle_network(bundle, device="cpu"):
    """``(network, preprocessing)`` of the model-zoo bundle folder ``bundle``: ``network_def`` with the weights of
    ``models/model.pt`` (eval mode), and the config's ``preprocessing`` (None when it has none)."""
    import torch
    from monai.bundle import ConfigParser

    from ..utils.checkpoint import load_state_dict

    bundle = Path(bundle).expanduser().resolve()
    if not bundle.is_dir():
        raise TrustMonaiError(f"--bundle {bundle}: not a folder")
    cfg = _config_file(bundle)
    weights = bundle / "models" / "model.pt"
    parser = ConfigParser()
    parser.read_config(str(cfg))
    if "network_def" not in parser.config:
        raise TrustMonaiError(f"{cfg}: no network_def (the network of a model-zoo bundle)")
    if not weights.is_file():
        raise TrustMonaiError(f"{bundle}: no weights at models/model.pt")
    parser["bundle_root"] = str(bundle)
    try:
        net = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as e:  # noqa: BLE001 - any failure to build the network is one clear error
        raise TrustMonaiError(f"{cfg}: cannot build network_def ({type(e).__name__}: {e})") from None
    if not isinstance(net, torch.nn.Module):
        raise TrustMonaiError(f"{cfg}: network_def is a {type(net).__name__}, not a torch.nn.Module")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    key = next((k for k in ("model", "state_dict", "network") if isinstance(state, dict) and k in state
                and isinstance(state[k], dict)), None)
    load_state_dict(net, weights, key=key, hint="the weights do not match the bundle's network_def")
    pre = None
    if "preprocessing" in parser.config:
        try:
            pre = parser.get_parsed_content("preprocessing", instantiate=True)
        except Exception as e:  # noqa: BLE001
            raise TrustMonaiError(f"{cfg}: cannot build preprocessing ({type(e).__name__}: {e})") from None
    return net.to(device).eval(), pre


def _inputs(input) -> list[dict]:
    """Entries ``{"image": path, "label": int | path | None}`` from a folder, one image file or a dataset.json
    (its ``test`` section, else ``testing``)."""
    src = Path(input).expanduser().resolve()
    if src.is_file() and src.name.endswith(".json"):
        doc = json.loads(src.read_text())
        section = next((s for s in ("test", "testing") if s in doc), None)
        if section is None:
            raise TrustMonaiError(f"{src}: no 'test' section to certify")
        return [{"image": str((src.parent / e["image"]) if isinstance(e, dict) else src.parent / e),
                 "label": e.get("label") if isinstance(e, dict) else None} for e in doc[section]]
    if src.is_file():
        return [{"image": str(src), "label": None}]
    if src.is_dir():
        files = sorted(p for p in src.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))
        if not files:
            raise TrustMonaiError(f"{src}: no images ({', '.join(IMAGE_SUFFIXES)})")
        return [{"image": str(p), "label": None} for p in files]
    raise TrustMonaiError(f"--input {src}: not found")


def _default_preprocessing():
    from monai.transforms import Compose, EnsureChannelFirstd, EnsureTyped, LoadImaged, ScaleIntensityd

    return Compose([LoadImaged("image", image_only=True), EnsureChannelFirstd("image"), ScaleIntensityd("image"),
                    EnsureTyped("image", track_meta=False)])


def _image(pre, entry, device):
    import torch

    out = pre({"image": entry["image"]})
    x = out["image"] if isinstance(out, dict) else out
    x = x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(np.asarray(x))
    return x.float().to(device)


def _finetune(net, pre, train, sigma, epochs, device, seed, out: Path):
    """Cohen et al.'s training: a few epochs of cross-entropy on ``x + N(0, sigma^2 I)``; returns the network."""
    import torch

    from ..utils.checkpoint import save_state_dict

    if train is None:
        raise TrustMonaiError("--noise_finetune_epochs needs --train DATASET_JSON (labelled 'training' section)")
    doc_path = Path(train).expanduser().resolve()
    if not doc_path.is_file():
        raise TrustMonaiError(f"--train {doc_path}: not found")
    doc = json.loads(doc_path.read_text())
    entries = [e for e in doc.get("training", []) if isinstance(e, dict) and "label" in e]
    if not entries:
        raise TrustMonaiError(f"{doc_path}: no labelled 'training' entries for the noise fine-tune")
    xs = torch.stack([_image(pre, {"image": str(doc_path.parent / e["image"])}, device) for e in entries])
    ys = torch.tensor([int(e["label"]) for e in entries], device=device)
    gen = torch.Generator(device).manual_seed(int(seed))
    opt = torch.optim.Adam(net.parameters(), lr=1e-4)
    net.train()
    for epoch in range(int(epochs)):
        order = torch.randperm(len(xs), generator=torch.Generator().manual_seed(int(seed) + epoch)).to(device)
        for i in range(0, len(xs), 32):
            idx = order[i:i + 32]
            x = xs[idx] + sigma * torch.randn(xs[idx].shape, generator=gen, device=device)
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x), ys[idx])
            loss.backward()
            opt.step()
        logger.info(f"noise fine-tune epoch {epoch + 1}/{epochs}: loss {float(loss.detach()):.4f}")
    net.eval()
    save_state_dict({k: v.detach().cpu() for k, v in net.state_dict().items()}, out / "model_noise_finetuned.pt")
    return net


def certify_bundle(bundle, input, output, sigma: float = 0.25, mode: str = "fixed", n0: int = 100, n: int = 1000,
                   alpha: float = 0.001, batch_size: int = 100, radius: float | None = None,
                   tolerance: float = 0.05, tau: float = 0.75, noise_finetune_epochs: int = 0,
                   train: str | None = None, device: str = "cpu", seed: int = 0, max_images: int = 0) -> list[dict]:
    """Certify the images of ``input`` with the network of the model-zoo bundle ``bundle`` as RS base model.

    Args:
        bundle: the bundle folder (``configs/inference.json`` with ``network_def``, ``models/model.pt``).
        input: a folder of images, one image, or a ``dataset.json`` (its ``test`` section; labels make the
            ``correct`` column).
        output: the output folder.
        sigma: smoothing noise, in the units of the preprocessed input.
        mode: ``fixed`` | ``decide`` (needs ``radius``) | ``adaptive`` (classification; segmentation: ``fixed``).
        n0, n, alpha, batch_size: Monte Carlo settings (``n`` is ``max_samples`` in the sequential modes).
        tolerance: radius the adaptive mode may trade for samples; ``tau``: segmentation's per-pixel threshold.
        noise_finetune_epochs, train: optional Gaussian-noise fine-tune on ``train``'s ``training`` section.
        max_images: certify at most this many images (0: all).

    Returns the per-image rows (also written to ``output/certify.csv``).
    """
    import torch
    from torch import nn

    from ..certify import SegmentationSmooth, Smooth
    from ..certify.smooth import check_sampling_args

    # settings first: nothing is loaded or sampled with a bad one
    if mode not in ("fixed", "decide", "adaptive"):
        raise TrustMonaiError(f"unknown mode {mode!r}; use fixed, decide or adaptive")
    probe = Smooth(nn.Identity(), 2, sigma)  # checks sigma
    if mode == "fixed":
        check_sampling_args(n0, n, alpha, batch_size)
    elif mode == "decide":
        if radius is None:
            raise TrustMonaiError("mode decide needs --radius")
        probe.check_decide(radius, alpha, n, batch_size, n0)
    else:
        probe.check_adaptive(alpha, n, batch_size, n0, tolerance)
    if not (isinstance(noise_finetune_epochs, int) and noise_finetune_epochs >= 0):
        raise TrustMonaiError(f"noise_finetune_epochs must be an integer >= 0, got {noise_finetune_epochs!r}")
    entries = _inputs(input)[: max_images or None]
    out = Path(output).expanduser().resolve()
    dev = torch.device(device)
    net, pre = load_bundle_network(bundle, dev)
    pre = pre or _default_preprocessing()
    try:
        x0 = _image(pre, entries[0], dev)
    except Exception as e:  # noqa: BLE001
        raise TrustMonaiError(f"{entries[0]['image']}: the bundle's preprocessing fails ({type(e).__name__}: {e})") \
            from None
    try:
        with torch.no_grad():
            y0 = net(x0[None])
    except Exception as e:  # noqa: BLE001 - the network's own complaint, in one line
        raise TrustMonaiError(f"the bundle's network does not accept the images: input {tuple(x0.shape)} from "
                              f"{entries[0]['image']} ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    if not torch.is_tensor(y0) or y0.ndim < 2:
        raise TrustMonaiError(f"the bundle's network returns {type(y0).__name__}, not logits (B, K) or (B, K, ...)")
    segmentation = y0.ndim > 2
    num_classes = int(y0.shape[1])
    if segmentation and mode != "fixed":
        raise TrustMonaiError("segmentation networks are certified in mode fixed (per-pixel Holm); decide / adaptive "
                              "are per-input rules")
    if num_classes < 2:
        raise TrustMonaiError(f"the bundle's network returns {num_classes} channel(s); certification needs >= 2 "
                              "class logits")
    out.mkdir(parents=True, exist_ok=True)
    if noise_finetune_epochs:
        net = _finetune(net, pre, train, float(sigma), noise_finetune_epochs, dev, seed, out)
    else:
        logger.warning("the base model was not fine-tuned with Gaussian noise: a network never trained on noisy "
                       "inputs gives many abstentions and small radii (see --noise_finetune_epochs)")
    rows: list[dict] = []
    smooth = (SegmentationSmooth(net, num_classes, sigma, seed=seed) if segmentation
              else Smooth(net, num_classes, sigma, seed=seed))
    for i, e in enumerate(entries):
        x = x0 if i == 0 else _image(pre, e, dev)
        smooth.manual_seed(int(seed) + i)
        label = e.get("label")
        t0 = time.perf_counter()
        row: dict = {"image": e["image"], "mode": mode}
        if segmentation:
            labels, r = smooth.certify(x, n0, n, alpha, min(batch_size, n), tau=tau)
            (out / "labels").mkdir(exist_ok=True)
            np.save(out / "labels" / (Path(e["image"]).name.split(".")[0] + ".npy"), labels.cpu().numpy())
            row.update(prediction="map", radius=r, certified_fraction=smooth.last_record["certified_fraction"],
                       samples_used=n0 + n)
        else:
            y = None if label is None else int(label)
            if mode == "fixed":
                pred, r = smooth.certify(x, n0, n, alpha, min(batch_size, n), label=y)
            elif mode == "decide":
                pred, _ = smooth.decide(x, float(radius), alpha, n, batch_size, n0=n0, label=y)
            else:
                pred, r, _ = smooth.certify_adaptive(x, alpha, n, batch_size, n0=n0, tolerance=tolerance, label=y)
            rec = smooth.last_record
            row.update(prediction=pred, label=y, correct=rec.correct, radius=rec.radius,
                       samples_used=rec.samples_used)
        row["time"] = time.perf_counter() - t0
        rows.append(row)
    cols = ["image", "prediction", "label", "correct", "radius", "certified_fraction", "mode", "samples_used", "time"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(out / "certify.csv", buf.getvalue())
    summary = {"bundle": str(Path(bundle).resolve()), "task": "segmentation" if segmentation else "classification",
               "num_classes": num_classes, "sigma": sigma, "mode": mode, "n0": n0, "n": n, "alpha": alpha,
               "radius": radius, "noise_finetune_epochs": noise_finetune_epochs, "images": len(rows),
               "mean_samples_used": float(np.mean([r["samples_used"] for r in rows])),
               "abstain": float(np.mean([r["prediction"] == -1 for r in rows])) if not segmentation else None}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=1) + "\n")
    print(f"certified {len(rows)} images with {Path(bundle).name}'s network ({summary['task']}, sigma {sigma:g}, "
          f"mode {mode}): {out / 'certify.csv'}")
    return rows
