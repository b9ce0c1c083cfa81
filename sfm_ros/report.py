"""Evaluation reports people can look at: JSON for machines, Markdown and an HTML page with pictures."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["colorize_depth", "plot_depth_grid", "plot_depth_previews", "plot_drift_curves", "plot_frame_errors",
           "plot_trajectories", "plot_trajectory", "write_report"]


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def colorize_depth(depth: np.ndarray, max_depth: float | None = None) -> np.ndarray:
    """Depth [H,W] (0/inf/NaN = none) -> RGB uint8 [H,W,3], magma on inverse depth (near = bright)."""
    from matplotlib import colormaps

    valid = np.isfinite(depth) & (depth > 0)
    inverse = np.zeros_like(depth, dtype=np.float64)
    inverse[valid] = 1.0 / depth[valid]
    if valid.any():
        low = 1.0 / max_depth if max_depth else np.percentile(inverse[valid], 2)
        high = np.percentile(inverse[valid], 98)
        inverse = np.clip((inverse - low) / max(high - low, 1e-9), 0, 1)
    rgb = (colormaps["magma"](inverse)[..., :3] * 255).astype(np.uint8)
    rgb[~valid] = 0
    return rgb


def _finish(plt: Any, figure: Any, axis: Any, path: Path, title: str) -> Path:
    """Title, grid, legend, save and close: the common end of every line plot."""
    axis.set_title(title)
    axis.grid(True, alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def plot_drift_curves(path: Path, curves: dict[str, tuple[Any, Any]], title: str) -> Path:
    """Position error (m, no alignment) over distance travelled (m), one line per name in ``curves``."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 4))
    for name, (distance_m, error_m) in curves.items():
        axis.plot(distance_m, error_m, label=name)
    axis.set(xlabel="distance travelled [m]", ylabel="position error [m] (no alignment)")
    return _finish(plt, figure, axis, path, title)


def plot_trajectory(path: Path, reference_xyz: np.ndarray, estimate_xyz: np.ndarray, title: str,
                    labels: tuple[str, str] = ("ground truth", "estimate")) -> Path:
    """Top view (x right, z forward: the camera optical frame of KITTI poses) of two trajectories."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 6))
    axis.plot(reference_xyz[:, 0], reference_xyz[:, 2], "k-", label=labels[0], linewidth=2)
    axis.plot(estimate_xyz[:, 0], estimate_xyz[:, 2], "-", color="tab:orange", label=labels[1])
    axis.plot(reference_xyz[0, 0], reference_xyz[0, 2], "go", label="start")
    axis.set_xlabel("x [m]")
    axis.set_ylabel("z (forward) [m]")
    axis.set_aspect("equal", adjustable="datalim")
    return _finish(plt, figure, axis, path, title)


def plot_frame_errors(path: Path, errors: dict[str, np.ndarray], ylabel: str, title: str) -> Path:
    """Per-frame error curves."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(8, 3.2))
    for label, values in errors.items():
        axis.plot(np.asarray(values), label=label)
    axis.set_xlabel("frame")
    axis.set_ylabel(ylabel)
    return _finish(plt, figure, axis, path, title)


def plot_depth_grid(path: Path, rows: list[dict[str, np.ndarray]], max_depth: float = 80.0,
                    truth_label: str = "LiDAR ground truth") -> Path:
    """Rows of input / predicted depth / ground truth / abs-rel error (each dict: rgb, pred, gt; gt 0 = none)."""
    import cv2

    plt = _pyplot()
    figure, axes = plt.subplots(len(rows), 4, figsize=(16, 1.6 * len(rows) + 0.6), squeeze=False)
    for r, row in enumerate(rows):
        height, width = row["gt"].shape
        pred = cv2.resize(row["pred"].astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
        gt = row["gt"]
        error = np.zeros_like(gt)
        valid = gt > 0
        error[valid] = np.abs(pred[valid] - gt[valid]) / gt[valid]
        dilated_gt = cv2.dilate(gt.astype(np.float32), np.ones((3, 3), np.uint8))
        dilated_error = cv2.dilate(error.astype(np.float32), np.ones((3, 3), np.uint8))
        panels = [row["rgb"], colorize_depth(pred, max_depth), colorize_depth(dilated_gt, max_depth),
                  dilated_error]
        titles = ["input", "prediction (median-scaled)", truth_label, "abs rel error (0-0.5)"]
        for c, (panel, title) in enumerate(zip(panels, titles, strict=True)):
            axis = axes[r, c]
            if c == 3:
                axis.imshow(panel, cmap="inferno", vmin=0, vmax=0.5)
            else:
                axis.imshow(panel)
            axis.set_axis_off()
            if r == 0:
                axis.set_title(title, fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def plot_depth_previews(path: Path, rows: list[tuple[str, np.ndarray, np.ndarray]]) -> Path:
    """Rows of (title, input RGB, depth in metres): the input beside its depth colour map (near = bright)."""
    plt = _pyplot()
    figure, axes = plt.subplots(len(rows), 2, figsize=(12, 1.9 * len(rows) + 0.4), squeeze=False)
    for r, (title, rgb, depth) in enumerate(rows):
        axes[r, 0].imshow(rgb)
        axes[r, 0].set_title(title, fontsize=9)
        axes[r, 1].imshow(colorize_depth(depth))
        finite = depth[np.isfinite(depth)]
        label = f"depth {np.percentile(finite, 5):.1f}-{np.percentile(finite, 95):.1f} (5-95 %)" if finite.size else ""
        axes[r, 1].set_title(label, fontsize=9)
        for axis in axes[r]:
            axis.set_axis_off()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return path


def _format(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_report(folder: str | Path, title: str, sections: list[dict[str, Any]], data: dict[str, Any]) -> Path:
    """Write ``report.json`` (``data``), ``report.md`` and ``index.html`` into ``folder``.

    sections: [{"heading", "text" (optional), "table": {name: value} (optional), "images": [file names]}].
    Returns the HTML page.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.json").write_text(json.dumps(data, indent=1, default=_json_default))
    markdown = [f"# {title}", ""]
    page = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
            "<style>body{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}"
            "img{max-width:100%;border:1px solid #ddd;margin:6px 0}</style></head><body>",
            f"<h1>{html.escape(title)}</h1>"]
    for section in sections:
        markdown += [f"## {section['heading']}", ""]
        page.append(f"<h2>{html.escape(section['heading'])}</h2>")
        if section.get("text"):
            markdown += [section["text"], ""]
            page.append(f"<p>{html.escape(section['text'])}</p>")
        if section.get("table"):
            markdown += ["| metric | value |", "| --- | --- |"]
            markdown += [f"| {k} | {_format(v)} |" for k, v in section["table"].items()]
            markdown.append("")
            rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_format(v))}</td></tr>"
                           for k, v in section["table"].items())
            page.append(f"<table>{rows}</table>")
        for image in section.get("images", []):
            markdown += [f"![{image}]({image})", ""]
            page.append(f"<img src='{html.escape(image)}' alt='{html.escape(image)}'>")
    page.append("</body></html>")
    (folder / "report.md").write_text("\n".join(markdown) + "\n")
    index = folder / "index.html"
    index.write_text("\n".join(page) + "\n")
    return index


def plot_trajectories(path: Path, reference_xyz: np.ndarray, estimates: dict[str, np.ndarray], title: str) -> Path:
    """Top view (x right, z forward: the camera optical frame of the first pose) of the truth [N,3] and several
    estimates {label: [N,3]}."""
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(7, 7))
    axis.plot(reference_xyz[:, 0], reference_xyz[:, 2], "k-", label="ground truth", linewidth=2.5)
    for label, xyz in estimates.items():
        axis.plot(xyz[:, 0], xyz[:, 2], "-", label=label, linewidth=1.5)
    axis.plot(reference_xyz[0, 0], reference_xyz[0, 2], "go", label="start")
    axis.set_xlabel("x [m]")
    axis.set_ylabel("z (forward) [m]")
    axis.set_aspect("equal", adjustable="datalim")
    return _finish(plt, figure, axis, path, title)
