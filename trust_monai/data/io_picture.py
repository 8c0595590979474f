"""2D pictures without geometry: PNG and TIFF (fundus photographs, microscopy, exported slices).

Read through PIL as ``H x W`` (grey) or ``H x W x C`` (colour) arrays in the file's own type (uint8, uint16 for
16-bit files, float32 for 32-bit float TIFF), with an identity affine; palette images are expanded to RGB(A). Written
back in the same format and mode with the source's text chunks (PNG) or descriptive tags (TIFF), plus a
``Derivation`` note. TIFF is always written losslessly: a JPEG-compressed source is re-written with LZW, since adding
a perturbation and then re-compressing lossily would move every pixel by more than the perturbation.

:mod:`trust_monai.data.io` dispatches here; use its ``read_image`` / ``write_image`` / ``probe_image``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trust_monai.errors import ArgumentError, InputFileError

PICTURE_FORMATS = ("png", "tiff")
PICTURE_SUFFIXES = {"png": (".png",), "tiff": (".tif", ".tiff")}
# TIFF tags worth carrying over (descriptive only: layout tags are PIL's job when it writes)
_TIFF_KEEP_TAGS = {269: "DocumentName", 271: "Make", 272: "Model", 305: "Software", 306: "DateTime",
                   315: "Artist", 33432: "Copyright"}
_TIFF_DESCRIPTION = 270
_LOSSLESS_TIFF = {"raw", "tiff_lzw", "tiff_adobe_deflate", "tiff_deflate", "packbits"}


def picture_format(path: Path) -> str | None:
    """``png`` / ``tiff`` from the file name's suffix; None for anything else."""
    name = path.name.lower()
    for fmt, suffixes in PICTURE_SUFFIXES.items():
        if name.endswith(suffixes):
            return fmt
    return None


def sniff_picture(head: bytes) -> str | None:
    """``png`` / ``tiff`` from a file's first bytes, None otherwise."""
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    return None


def _open_checked(path: Path, fmt: str):
    from PIL import Image

    img = Image.open(path)
    want = "PNG" if fmt == "png" else "TIFF"
    if img.format != want:
        img.close()
        raise InputFileError(path, f"not a {want} ({img.format})")
    if fmt == "tiff" and getattr(img, "n_frames", 1) > 1:
        n = img.n_frames
        img.close()
        raise InputFileError(path, f"TIFF with {n} pages; only single-page pictures are supported "
                                   "(save a volume as NIfTI, or one page per file)")
    return img


def _plain_mode(img):
    """The mode conversions every reader applies, so read and probe agree."""
    if img.mode == "P":  # palette: give the colours, not palette indices
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode == "1":
        return img.convert("L")
    if img.mode == "I" and img.format == "PNG":  # PIL's 16-bit greyscale PNG may load as 32-bit; the file holds 16
        return img.convert("I;16")
    return img


def read_picture(path: Path, fmt: str):
    """``(array, ImageMeta)`` of a PNG or TIFF file."""
    from .io import ImageMeta, _native

    with _open_checked(path, fmt) as img:
        img.load()
        info = dict(img.info)
        if fmt == "tiff":
            tags = getattr(img, "tag_v2", {})
            info = {"compression": info.get("compression", "raw"), "dpi": info.get("dpi")}
            info.update({name: tags[t] for t, name in _TIFF_KEEP_TAGS.items() if t in tags})
            if _TIFF_DESCRIPTION in tags:
                info["ImageDescription"] = tags[_TIFF_DESCRIPTION]
            info = {k: v for k, v in info.items() if v is not None}
        img = _plain_mode(img)
        arr = np.array(img)
        info["mode"] = img.mode
    arr = _native(arr)
    return arr, ImageMeta(fmt, str(path), np.eye(4), (1.0, 1.0), arr.dtype, arr.shape, info)


def write_picture(array: np.ndarray, meta, out: Path, derivation: str, _code: Any = None) -> None:
    """Write ``array`` as ``meta.format`` (PNG or TIFF) with the source's descriptive metadata, atomically."""
    from PIL import Image

    from trust_monai.utils.fileio import atomic_path

    from .io_base import _check_suffix, _to_stored

    fmt = meta.format
    _check_suffix(out, fmt)
    data = _to_stored(array, meta.dtype)
    try:
        img = Image.fromarray(data)
    except (TypeError, ValueError) as e:  # a shape / type the format cannot hold, e.g. (H, W, 1, 1) or 5 channels
        raise ArgumentError(f"{out}: a {data.dtype} array of shape {data.shape} cannot be written as {fmt.upper()} "
                            f"(H x W, or H x W x 2/3/4): {e}") from None
    header = meta.header or {}
    kwargs: dict[str, Any] = {}
    if fmt == "png":
        from PIL.PngImagePlugin import PngInfo

        info = PngInfo()
        for key, value in header.items():
            # text chunks; binary chunks (icc, exif) are passed below; an older Derivation is replaced by the new one
            if isinstance(value, str) and key != "mode" and not (derivation and key == "Derivation"):
                info.add_text(key, value)
        if derivation:
            info.add_text("Derivation", derivation)
        kwargs["pnginfo"] = info
        for key in ("dpi", "icc_profile", "exif"):
            if key in header:
                kwargs[key] = header[key]
    else:
        from PIL.TiffImagePlugin import ImageFileDirectory_v2

        tags = ImageFileDirectory_v2()
        for t, name in _TIFF_KEEP_TAGS.items():
            if isinstance(header.get(name), str):
                tags[t] = header[name]
        description = str(header.get("ImageDescription", "") or "")
        if derivation:  # TIFF has no free key/value store; the description carries the note after the original
            description = f"{description}\nDerivation: {derivation}".strip()
        if description:
            tags[_TIFF_DESCRIPTION] = description
        compression = header.get("compression", "raw")
        kwargs = {"tiffinfo": tags, "compression": compression if compression in _LOSSLESS_TIFF else "tiff_lzw"}
        if "dpi" in header:
            kwargs["dpi"] = header["dpi"]
    with atomic_path(out) as tmp:
        img.save(tmp, format="PNG" if fmt == "png" else "TIFF", **kwargs)


def probe_picture(path: Path, fmt: str) -> tuple[int, ...]:
    """Shape as :func:`read_picture` would return it, without decoding the pixels."""
    from PIL import Image

    with _open_checked(path, fmt) as img:
        (w, h), mode, info = img.size, img.mode, dict(img.info)
        if fmt == "png":
            img.verify()  # checks chunk CRCs without decoding the pixels
    converted = {"P": 4 if "transparency" in info else 3, "1": 1, "I": 1, "I;16": 1, "F": 1}
    bands = converted[mode] if mode in converted else Image.getmodebands(mode)
    return (h, w) if bands == 1 else (h, w, bands)
