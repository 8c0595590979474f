"""Pictures people would rather look at than read: before / after / difference panels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..utils.fileio import atomic_path

__all__ = ["before_after_png", "html_report", "verb_report"]


def _middle_slice(a: np.ndarray, label: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    """2D view of a scan: itself, or the axial slice with the most label voxels (the middle one when unlabelled)."""
    if a.ndim == 2 or (a.ndim == 3 and a.shape[-1] in (3, 4) and a.dtype == np.uint8):
        return a, label
    k = int(np.argmax((label > 0).reshape(-1, a.shape[-1]).sum(0))) if label is not None else a.shape[-1] // 2
    return a[..., k], None if label is None else label[..., k]


def before_after_png(clean_dir, changed_dir, path, section: str = "training", n: int = 4, title: str = "protected"):
    """Write a grid of ``n`` cases: original, changed copy, |difference| (contrast-stretched), mask outline.

    Reads ``n`` entries of ``section``, evenly spaced, that exist in both folders (same relative paths). Returns the
    path, or None when no case is in both.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..data.datalist import load_datalist
    from ..data.io import PICTURE_FORMATS, read_image
    from ..transforms.intensity import is_colour, to_luminance

    clean = load_datalist(clean_dir, section, keys=("image", "label"))
    changed_root = Path(changed_dir).resolve()
    pairs = []
    for entry in clean:
        rel = Path(entry["image"]).resolve().relative_to(Path(clean_dir).resolve())
        if (changed_root / rel).exists():
            pairs.append((entry, changed_root / rel))
    # evenly spaced through the list (the first cases of a slice dataset are edge slices with little to see), and
    # only cases whose mask has foreground when there are enough: an empty mask means an unchanged case
    order = [int(i) for i in np.unique(np.linspace(0, len(pairs) - 1, min(4 * n, len(pairs))).round())] if pairs else []
    with_fg = [i for i in order if isinstance(pairs[i][0].get("label"), str) and (read_image(pairs[i][0]["label"])[0] > 0).any()]
    picked = with_fg if len(with_fg) >= min(n, len(order)) else order
    rows = [pairs[i] for i in picked[:: max(1, len(picked) // n)][:n]]
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 3, figsize=(8.4, 2.8 * len(rows)), squeeze=False)
    for (entry, other), ax in zip(rows, axes):
        a, meta = read_image(entry["image"])
        b, _ = read_image(other)
        lab = read_image(entry["label"])[0] if isinstance(entry.get("label"), str) else None
        if lab is not None and is_colour(a, lab.ndim):  # colour photographs: show the luminance the change moved
            a, b = to_luminance(a), to_luminance(b)
        if meta.format in PICTURE_FORMATS:  # (rows, cols), top row first: the plot below draws (x, y) with y upwards
            a, b = a.T[:, ::-1], b.T[:, ::-1]
            lab = lab.T[:, ::-1] if lab is not None else None
        a2, l2 = _middle_slice(np.asarray(a, np.float64), lab)
        b2, _ = _middle_slice(np.asarray(b, np.float64), lab)
        lo, hi = np.percentile(a2, [0.5, 99.5]) if a2.size else (0, 1)
        diff = np.abs(b2 - a2)
        for axis, img, name, kw in (
            (ax[0], a2, "original", dict(cmap="gray", vmin=lo, vmax=hi)),
            (ax[1], b2, title, dict(cmap="gray", vmin=lo, vmax=hi)),
            (ax[2], diff, f"|difference| (max {diff.max():.3g})", dict(cmap="magma", vmin=0, vmax=max(diff.max(), 1e-12))),
        ):
            axis.imshow(img.T if img.ndim == 2 else img, origin="lower" if img.ndim == 2 else "upper", **kw)
            if l2 is not None and (l2 > 0).any() and img.ndim == 2:
                axis.contour((l2 > 0).T.astype(float), levels=[0.5], colors="cyan", linewidths=0.6)
            axis.set_title(name, fontsize=8)
            axis.axis("off")
        ax[0].set_ylabel(Path(entry["image"]).name)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
    return Path(path)


def _html_table(rows: list[dict], limit: int = 500) -> str:
    import html

    if not rows:
        return "<p><em>no rows</em></p>"
    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]

    def cell(v) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        return html.escape(str(v if v is not None else ""))

    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c))}</td>" for c in cols) + "</tr>" for r in rows[:limit])
    more = f"<p>{len(rows) - limit} more rows in the CSV / manifest.</p>" if len(rows) > limit else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def html_report(path, title: str, facts: dict, tables: list[tuple[str, list[dict]]],
                pictures: list[tuple[str, Path]]) -> Path:
    """Write one self-contained HTML page (pictures embedded, so it can be mailed or archived with the data)."""
    import base64
    import html

    from ..utils.fileio import atomic_write_text

    parts = [f"<h1>{html.escape(title)}</h1>", "<table class=facts>"]
    parts += [f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts.items()]
    parts.append("</table>")
    for caption, png in pictures:
        if png and Path(png).is_file():
            data = base64.b64encode(Path(png).read_bytes()).decode()
            parts.append(f"<h2>{html.escape(caption)}</h2><img alt='{html.escape(caption)}' "
                         f"src='data:image/png;base64,{data}'>")
    for caption, rows in tables:
        parts.append(f"<h2>{html.escape(caption)}</h2>{_html_table(rows)}")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse;margin:1em 0}"
             "td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}img{max-width:100%}"
             "table.facts th{background:#f4f4f4}")
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{style}</style></head><body>{''.join(parts)}</body></html>")
    return atomic_write_text(Path(path), doc)


def _csv_rows(path: Path) -> list[dict]:
    import csv

    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _manifest_rows(manifest: dict, dataset_dir: Path) -> list[dict]:
    rows = []
    for c in manifest.get("cases", []):
        src = str(c.get("input") or "")
        rel = Path(src).relative_to(dataset_dir).as_posix() if src.startswith(str(dataset_dir)) else src
        row = {"input": rel, "output": c.get("output"), "status": c.get("status")}
        row.update({k: v for k, v in (c.get("metrics") or {}).items() if not isinstance(v, (dict, list))})
        if c.get("error"):
            row["error"] = c["error"]
        rows.append(row)
    return rows


def verb_report(verb: str, spec, dataset_dir, output_dir, sections, command: str, rc: int, seconds: float,
                input_path: str) -> Path:
    """``output_dir/report.html`` for one hospital-workflow verb: facts, pictures, metrics table, manifest."""
    import json

    out = Path(output_dir)
    manifest = json.loads((out / "manifest.json").read_text()) if (out / "manifest.json").is_file() else {}
    cases = _manifest_rows(manifest, Path(dataset_dir).resolve())
    status = {s: sum(c["status"] == s for c in cases) for s in ("done", "copied", "skipped", "error")}
    facts = {"what": spec.what, "bundle": spec.bundle, "input": input_path, "output": str(out),
             "result": "finished" if rc == 0 else f"exit code {rc} (see the errors below and the log)",
             "cases": ", ".join(f"{k} {v}" for k, v in status.items() if v) or "-",
             "run time": f"{seconds:.1f} s", "command": command}
    pictures: list[tuple[str, Path]] = []
    tables: list[tuple[str, list[dict]]] = []
    if spec.changes_images:
        for s in sections:
            png = before_after_png(dataset_dir, out, out / ".trust_monai" / f"before_after_{s}.png", section=s,
                                   title=spec.done)
            if png:
                pictures.append((f"before / after ({s})", png))
        tables.append(("cases (manifest.json)", cases))
    elif verb == "certify":
        pictures.append(("certified label maps (white: abstain)", out / "certified_segmentation.png"))
        tables.append(("summary", _csv_rows(out / "certified_segmentation.csv")))
        tables.append(("per case", _csv_rows(out / "certify_cases.csv")))
        tables.append(("files (manifest.json)", cases))
    elif verb == "detect":
        pictures.append(("where the detector looks (most fake-looking first)", out / "heatmaps.png"))
        rep = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
        tables.append(("per volume", rep.get("volumes", [])))
        tables.append(("per image", [{k: v for k, v in r.items() if k != "slice_scores"}
                                     for r in rep.get("images", [])]))
    return html_report(out / "report.html", f"trust-monai {verb}", facts, tables, pictures)
