"""The figures: FID/KID vs epsilon, the specificity heatmaps, sample grids and the sample figure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from . import methods as M
from .io import atomic_path, format_epsilon


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path, dpi=130) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    _plt().close(fig)


def save_image_grid(path, images: np.ndarray, ncols: int, scale: int = 2) -> None:
    """uint8 [N,H,W,C] -> one PNG grid (1-px gaps), written atomically."""
    from PIL import Image

    n, h, w, c = images.shape
    nrows = math.ceil(n / ncols)
    grid = np.full((nrows * (h + 1) + 1, ncols * (w + 1) + 1, c), 255, np.uint8)
    for i, im in enumerate(images):
        r, q = divmod(i, ncols)
        grid[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + q * (w + 1):1 + q * (w + 1) + w] = im
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def plot_vs_epsilon(path, metrics: pd.DataFrame, metric: str = "fid", adjacency: str = "add_remove") -> None:
    """The paper's main figure: ``metric`` vs epsilon (log2 axis) per method, the mean over
    private sets (seeds averaged within a set) and 95 % Student-t error bars over the sets
    (:func:`dpdeepsets.tables.t_interval`; none with one set); methods without an epsilon
    grid (public-only at 0, the non-private references at inf) are horizontal lines."""
    from .tables import t_interval

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    finite = metrics[np.isfinite(metrics["epsilon"]) & (metrics["epsilon"] > 0)]
    for i, name in enumerate(M.REGISTRY):
        g = finite[finite["method"] == name]
        if not len(g) or not M.get(name).has_grid:
            continue
        units = g.groupby(["epsilon", "pset"])[metric].mean()
        eps = sorted(units.index.get_level_values(0).unique())
        stats = [t_interval(units.loc[e].to_numpy()) for e in eps]
        mean = np.array([m for m, _, _ in stats])
        err = np.nan_to_num(np.array([hi - m for m, _, hi in stats]))
        ax.errorbar(eps, mean, yerr=err, marker="o", capsize=3,
                    label=M.get(name).label, color=colors[i % len(colors)])
    refs = metrics[(metrics["epsilon"] == 0) | ~np.isfinite(metrics["epsilon"])]
    styles = iter(["--", ":", "-.", (0, (5, 1)), (0, (1, 3))])
    for (name, eps), g in refs.groupby(["method", "epsilon"], sort=False):
        what = "no private data" if eps == 0 else "NOT private"
        label = f"{M.get(name).label} ({what})" if name != "dpdeepsets" else "DP-DeepSets without noise (NOT private)"
        ax.axhline(g[metric].mean(), linestyle=next(styles, "--"), color="0.35", lw=1.2, label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"epsilon (log2 scale; delta fixed, {adjacency.replace('_', '/')} adjacency for every method)")
    ax.set_ylabel(f"{metric.upper()} vs private set (lower is better)")
    n_sets = metrics["pset"].nunique()
    ax.set_title(f"Sample quality vs privacy budget (mean over {n_sets} disjoint private sets, "
                 f"95% t-interval)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    _save(fig, path)


def plot_specificity(path, scores: pd.DataFrame, epsilon: float) -> None:
    """One heatmap per method at ``epsilon``: FID of the samples made for set i (rows) scored
    against set j (columns), mean over seeds; a specific method has its minimum on the
    diagonal."""
    plt = _plt()
    cells = scores[(scores["pset"] != "all") & ((scores["epsilon"] == epsilon)
                                               | ~np.isfinite(scores["epsilon"]))]
    names = [n for n in M.REGISTRY if n in set(cells["method"])
             and (M.get(n).has_grid or M.get(n).privacy == "nonprivate")]
    if not names:
        names = []
    fig, axes = plt.subplots(1, max(1, len(names)), figsize=(2.4 * max(1, len(names)), 2.8),
                             squeeze=False)
    for ax, name in zip(axes[0], names):
        g = cells[(cells["method"] == name) & ((cells["epsilon"] == epsilon) if M.get(name).has_grid
                                               else True)]
        mat = g.pivot_table(index="pset", columns="scored_against", values="fid", aggfunc="mean")
        im = ax.imshow(mat.values, cmap="viridis_r")
        ax.set_xticks(range(len(mat.columns)), mat.columns, fontsize=7)
        ax.set_yticks(range(len(mat.index)), mat.index, fontsize=7)
        for i in range(mat.shape[0]):
            j = int(np.nanargmin(mat.values[i]))
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
        ax.set_title(M.get(name).label, fontsize=8)
        ax.set_xlabel("scored against", fontsize=7)
        fig.colorbar(im, ax=ax, fraction=0.046)
    axes[0][0].set_ylabel("samples made for", fontsize=7)
    fig.suptitle(f"Specificity at epsilon {format_epsilon(epsilon)}: FID (red box = row minimum)",
                 fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def sample_figure(path, rows: list[tuple[str, list[tuple[str, np.ndarray]]]], per_cell: int = 4,
                  title: str | None = None) -> None:
    """Rows = private sets, columns = (label, samples) cells; ``per_cell`` x ``per_cell`` each."""
    plt = _plt()
    ncol = max(len(cells) for _, cells in rows)
    fig, axes = plt.subplots(len(rows), ncol, figsize=(1.6 * ncol, 1.7 * len(rows)), squeeze=False)
    for r, (row_label, cells) in enumerate(rows):
        for c in range(ncol):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(cells):
                continue
            label, imgs = cells[c]
            k = per_cell
            tile = imgs[: k * k]
            h, w, ch = tile.shape[1:]
            grid = tile.reshape(k, k, h, w, ch).transpose(0, 2, 1, 3, 4).reshape(k * h, k * w, ch)
            ax.imshow(grid[..., 0] if ch == 1 else grid, cmap="gray", vmin=0, vmax=255)
            if r == 0:
                ax.set_title(label, fontsize=8)
        axes[r][0].text(-0.1, 0.5, row_label, transform=axes[r][0].transAxes, ha="right",
                        va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path, dpi=120)
