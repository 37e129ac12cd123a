"""Matplotlib without a display: figures are only ever written to PNG files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["pyplot", "subplots", "save"]


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; a clear error when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("the report's plots need matplotlib: pip install matplotlib "
                          "(or pip install 'lightning-afm[bench]'); use --no-plot for the Markdown alone") from None
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def subplots(n: int, ncols: int = 3, width: float = 4.2, height: float = 3.3) -> tuple[Any, list[Any]]:
    """A figure with ``n`` axes on a grid of at most ``ncols`` columns; unused cells are hidden."""
    plt = pyplot()
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(width * ncols, height * nrows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def save(fig: Any, path: str | Path, title: str | None = None) -> Path:
    """Write ``fig`` to ``path`` (PNG, 120 dpi) and close it."""
    plt = pyplot()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
