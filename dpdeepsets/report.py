"""Aggregation and figures: metrics table, privacy ledger, FID-vs-epsilon plot, sample grids."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from .io import atomic_path, parse_epsilon, read_json


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


def metrics_table(metric_files) -> pd.DataFrame:
    """One row per (method, pset, epsilon, seed), sorted; epsilon as a float (inf allowed)."""
    rows = [read_json(f) for f in metric_files]
    df = pd.DataFrame(rows)
    df["epsilon"] = df["epsilon"].map(parse_epsilon)
    return df.sort_values(["method", "pset", "epsilon", "seed"]).reset_index(drop=True)


def ledger_table(release_files, delta: float) -> pd.DataFrame:
    """Every release with its parameters, plus the composed guarantee of its private set.

    The composition (Gaussian DP, exact for Gaussian releases) answers: what would it cost
    to publish all of these releases of the same private set together? It covers the
    DP-DeepSets analytic-Gaussian releases only (mechanism ``analytic_gaussian``). DP-SGD
    rows (``fit_baseline``, mechanism ``dp-sgd (opacus, ...)``) carry their own accountant's
    ``accounted_epsilon`` (with ``noise_multiplier``, ``sample_rate``, ``steps``); their
    ``composed_*`` columns are NaN (they are not Gaussian releases of one mean; composing
    them would need their accountant). Extra columns of any row are kept, after the
    standard ones.
    """
    from .privacy import compose_releases

    rows = []
    for f in release_files:
        led = dict(read_json(f)["ledger"])
        led["epsilon"] = parse_epsilon(led["epsilon"])
        led["release_file"] = str(f)
        rows.append(led)
    df = pd.DataFrame(rows)
    gaussian = df["mechanism"].isin(["analytic_gaussian"]) | (
        df["method"].eq("dpdeepsets") & ~df["private"].astype(bool))
    composed = {}
    for pset, g in df[gaussian].groupby("pset"):
        private = g[g["private"].astype(bool)]
        if len(private):
            c = compose_releases(private.to_dict("records"), delta)
            composed[pset] = (c["n_releases"], c["mu"], c["epsilon"])
        else:
            composed[pset] = (0, 0.0, 0.0)
    nan = (math.nan, math.nan, math.nan)
    keys = [composed.get(p, nan) if is_g else nan for p, is_g in zip(df["pset"], gaussian)]
    df["composed_n_releases"] = [k[0] for k in keys]
    df["composed_mu"] = [k[1] for k in keys]
    df["composed_epsilon"] = [k[2] for k in keys]
    df["composed_delta"] = [delta if is_g else math.nan for is_g in gaussian]
    cols = ["pset", "seed", "method", "epsilon", "delta", "sigma", "sensitivity", "clip_norm",
            "n", "dim", "adjacency", "mechanism", "noise_source", "private",
            "composed_n_releases", "composed_mu", "composed_epsilon", "composed_delta", "release_file"]
    cols += [c for c in df.columns if c not in cols]
    return df[cols].sort_values(["pset", "method", "epsilon", "seed"]).reset_index(drop=True)


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and std of FID/KID per (method, epsilon) over private sets and seeds, and each
    method's FID margin over DP-DeepSets at the same epsilon (positive = DP-DeepSets better).

    Methods without a privacy parameter (base, and every epsilon = inf row) are compared
    with nothing (margin NaN), except dpdeepsets' own inf row against nonprivate's.
    """
    g = df.groupby(["method", "epsilon"])
    out = g.agg(n_cells=("fid", "size"), fid_mean=("fid", "mean"), fid_std=("fid", "std"),
                kid_mean=("kid", "mean"), kid_std=("kid", "std")).reset_index()
    ours = out[out["method"] == "dpdeepsets"].set_index("epsilon")["fid_mean"]
    out["fid_minus_dpdeepsets"] = [
        (row.fid_mean - ours[row.epsilon]) if (row.method not in ("dpdeepsets", "base")
                                               and row.epsilon in ours.index) else math.nan
        for row in out.itertuples()]
    return out.sort_values(["epsilon", "method"]).reset_index(drop=True)


def write_csv(path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def plot_fid_vs_epsilon(path, df: pd.DataFrame, metric: str = "fid") -> None:
    """The paper's main figure: metric vs epsilon (log2 axis), mean and std over sets/seeds.

    Methods without a privacy parameter (base) and epsilon = inf rows are drawn as
    horizontal reference lines.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    finite = df[np.isfinite(df["epsilon"])]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (method, g) in enumerate(finite.groupby("method")):
        s = g.groupby("epsilon")[metric].agg(["mean", "std", "count"]).reset_index()
        ax.errorbar(s["epsilon"], s["mean"], yerr=s["std"].fillna(0), marker="o", capsize=3,
                    label=method, color=colors[i % len(colors)])
    refs = df[~np.isfinite(df["epsilon"])]
    for j, ((method, _), g) in enumerate(refs.groupby(["method", "epsilon"])):
        label = f"{method} (no noise)" if method != "base" else "base model, no LoRA"
        ax.axhline(g[metric].mean(), linestyle="--", color=colors[(j + 3) % len(colors)],
                   label=label)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("epsilon (log2 scale)")
    ax.set_ylabel(f"{metric.upper()} vs private set (lower is better)")
    ax.set_title("DP-DeepSets: sample quality vs privacy budget")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)
    plt.close(fig)


def sample_figure(path, rows: list[tuple[str, list[tuple[str, np.ndarray]]]], per_cell: int = 4,
                  title: str | None = None) -> None:
    """Rows = private sets, columns = (label, samples) cells; ``per_cell`` x ``per_cell`` each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

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
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
