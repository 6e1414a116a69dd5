"""Plots of a sweep (PNG, with matplotlib from the optional ``plot`` extra).

- ``jf_vs_timestep.png``: J&F-Mean against the diffusion timestep t, one line per up block (the
  form of Fig. 5 of the DIFT paper), when both ``features.dift.timestep`` and
  ``features.dift.up_ft_index`` are varied.
- ``heatmap_<key a>_x_<key b>.png``: J&F-Mean over every pair of varied axes, the other axes at
  the best point's values.
- ``jf_vs_<key>.png``: J&F-Mean against the only varied axis, when there is just one.

Every figure is :data:`FIGURE_SIZE_PX` pixels. Points not scored (yet) are gaps. Figures are
drawn on matplotlib's object API with the Agg canvas (pyplot's global state is never touched)
and written atomically.
"""

from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Mapping

from vidprop.sweep.grid import Axis, Grid, format_value
from vidprop.sweep.report import PointResult, best_result

__all__ = ["write_plots", "plots_available", "FIGURE_SIZE_PX", "TIMESTEP_KEY", "LAYER_KEY", "INSTALL_HINT"]

logger = logging.getLogger(__name__)

FIGURE_SIZE_PX = (800, 500)
_DPI = 100
TIMESTEP_KEY = "features.dift.timestep"
LAYER_KEY = "features.dift.up_ft_index"
INSTALL_HINT = "pip install 'vidprop[plot]'"


def plots_available() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(FIGURE_SIZE_PX[0] / _DPI, FIGURE_SIZE_PX[1] / _DPI), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> Path:
    from vidprop.io.atomic import atomic_save

    return atomic_save(path, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI))


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text)


def _value_at(grid: Grid, results: Mapping[int, PointResult], fixed: dict[str, object]) -> float:
    """J&F-Mean of the point whose axis values are ``fixed`` (NaN if not scored)."""
    for point in grid.points:
        if all(format_value(v) == format_value(fixed[k]) for k, v in zip(grid.keys, point.values)):
            result = results.get(point.index)
            return math.nan if result is None else result.j_and_f
    return math.nan


def _others(grid: Grid, best_values: dict[str, object], shown: tuple[str, ...]) -> str:
    rest = [f"{a.label}={format_value(best_values[a.key])}" for a in grid.axes if a.key not in shown and len(a.values) > 1]
    return f"other axes at the best point: {', '.join(rest)}" if rest else ""


def _title(ax, title: str, note: str) -> None:
    ax.set_title(f"{title}\n{note}" if note else title, fontsize=11)


def _numeric(axis: Axis) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in axis.values)


def _layer_label(value: object) -> str:
    return f"up block {value}" if isinstance(value, int) else f"up blocks {format_value(value)}"


def _plot_timestep_layers(grid: Grid, results, best_values, path: Path) -> Path:
    t_axis, layer_axis = grid.axis(TIMESTEP_KEY), grid.axis(LAYER_KEY)
    ts = sorted(t_axis.values)
    fig = _figure()
    ax = fig.add_subplot()
    for layer in layer_axis.values:
        ys = [_value_at(grid, results, {**best_values, TIMESTEP_KEY: t, LAYER_KEY: layer}) for t in ts]
        ax.plot(ts, ys, marker="o", label=_layer_label(layer))
    best_t, best_layer = best_values[TIMESTEP_KEY], best_values[LAYER_KEY]
    best_y = _value_at(grid, results, best_values)
    ax.plot([best_t], [best_y], marker="*", markersize=16, color="black", linestyle="none",
            label=f"best: t={best_t}, {_layer_label(best_layer)}")
    ax.set_xlabel("diffusion timestep t")
    ax.set_ylabel("J&F-Mean")
    _title(ax, "J&F-Mean against timestep t, one line per UNet up block", _others(grid, best_values, (TIMESTEP_KEY, LAYER_KEY)))
    ax.grid(True, alpha=0.3)
    ax.legend(title="feature layer")
    return _save(fig, path)


def _plot_line(grid: Grid, axis: Axis, results, best_values, path: Path) -> Path:
    fig = _figure()
    ax = fig.add_subplot()
    values = sorted(axis.values) if _numeric(axis) else list(axis.values)
    ys = [_value_at(grid, results, {**best_values, axis.key: v}) for v in values]
    xs = values if _numeric(axis) else list(range(len(values)))
    ax.plot(xs, ys, marker="o")
    if not _numeric(axis):
        ax.set_xticks(xs, [format_value(v) for v in values])
    ax.set_xlabel(axis.key)
    ax.set_ylabel("J&F-Mean")
    _title(ax, f"J&F-Mean against {axis.key}", "")
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def _plot_heatmap(grid: Grid, a: Axis, b: Axis, results, best_values, path: Path) -> Path:
    import numpy as np

    values = np.array(
        [[_value_at(grid, results, {**best_values, a.key: va, b.key: vb}) for vb in b.values] for va in a.values], dtype=float
    )
    fig = _figure()
    ax = fig.add_subplot()
    from matplotlib import colormaps

    cmap = colormaps["viridis"].with_extremes(bad="lightgrey")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto", origin="upper")
    ax.set_xticks(range(len(b.values)), [format_value(v) for v in b.values])
    ax.set_yticks(range(len(a.values)), [format_value(v) for v in a.values])
    ax.set_xlabel(b.key)
    ax.set_ylabel(a.key)
    _title(ax, f"J&F-Mean over {a.label} x {b.label} (red box: the best point)", _others(grid, best_values, (a.key, b.key)))
    fig.colorbar(image, ax=ax, label="J&F-Mean")
    finite = values[np.isfinite(values)]
    if values.size <= 225 and finite.size:
        middle = (finite.min() + finite.max()) / 2
        for i in range(values.shape[0]):
            for j in range(values.shape[1]):
                if np.isfinite(values[i, j]):
                    colour = "black" if values[i, j] > middle else "white"
                    ax.text(j, i, f"{values[i, j]:.4f}", ha="center", va="center", fontsize=8, color=colour)
    best_i = [format_value(v) for v in a.values].index(format_value(best_values[a.key]))
    best_j = [format_value(v) for v in b.values].index(format_value(best_values[b.key]))
    from matplotlib.patches import Rectangle

    ax.add_patch(Rectangle((best_j - 0.5, best_i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    return _save(fig, path)


def write_plots(grid: Grid, results: Mapping[int, PointResult], out_dir: Path) -> list[Path]:
    """Write the sweep's plots into ``out_dir`` (see the module docstring); return their paths.

    Without matplotlib nothing is written and an INFO line says how to get the plots.
    """
    best = best_result(results)
    varied = [a for a in grid.axes if len(a.values) > 1]
    if best is None or not varied:
        return []
    if not plots_available():
        logger.info("plots not written: matplotlib is not installed (%s); sweep.csv and best.yaml are complete", INSTALL_HINT)
        return []
    best_values = dict(zip(grid.keys, grid.points[best.index].values))
    out_dir = Path(out_dir)
    paths = []
    keys = {a.key for a in varied}
    if TIMESTEP_KEY in keys and LAYER_KEY in keys:
        paths.append(_plot_timestep_layers(grid, results, best_values, out_dir / "jf_vs_timestep.png"))
    if len(varied) == 1:
        paths.append(_plot_line(grid, varied[0], results, best_values, out_dir / f"jf_vs_{_safe(varied[0].key)}.png"))
    for i, a in enumerate(varied):
        for b in varied[i + 1:]:
            name = f"heatmap_{_safe(a.key)}_x_{_safe(b.key)}.png"
            paths.append(_plot_heatmap(grid, a, b, results, best_values, out_dir / name))
    return paths
