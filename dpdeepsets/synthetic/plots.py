"""The figures of the synthetic comparison: excess risk vs epsilon per D, and vs the shift angle."""

from __future__ import annotations

import numpy as np
import pandas as pd

from .experiment import METHODS, REFERENCES, summarise

_STYLE = {"dpdeepsets": ("C0", "o", "DP-DeepSets"),
          "dpsgd": ("C3", "s", "DP-SGD, all D coordinates (opacus)"),
          "dpsgd_subspace": ("C1", "^", "DP-SGD in public subspace span(P) (opacus)"),
          "least_squares": ("C2", None, "least squares (non-private)"),
          "oracle_subspace_ls": ("C4", None, "oracle: LS in true subspace (non-private)"),
          "zero": ("0.4", None, "zero predictor")}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _savefig(fig, path):
    from ..io import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=130)


def plot_excess_risk(path, df: pd.DataFrame) -> None:
    """Excess risk vs epsilon (log x and y), one panel per D, 95% CIs; references dashed."""
    plt = _pyplot()
    dims = sorted(df["D"].unique())
    fig, axes = plt.subplots(1, len(dims), figsize=(4.2 * len(dims), 3.9), sharey=True,
                             squeeze=False)
    s = summarise(df, ["D", "epsilon", "method"])
    for ax, dim in zip(axes[0], dims):
        sd = s[s["D"] == dim]
        for method in METHODS:
            g = sd[sd["method"] == method].sort_values("epsilon")
            color, marker, label = _STYLE[method]
            ax.errorbar(g["epsilon"], g["mean"], yerr=g["ci95"], color=color, marker=marker,
                        capsize=3, label=label)
        for method in REFERENCES:
            g = sd[sd["method"] == method]
            if len(g):
                color, _, label = _STYLE[method]
                m, c = float(g["mean"].iloc[0]), float(g["ci95"].iloc[0])
                ax.axhline(m, color=color, linestyle="--", label=label)
                ax.axhspan(max(m - c, 1e-12), m + c, color=color, alpha=0.12)
        k = int(df["k"].iloc[0])
        ax.set_title(f"D = {dim}, k = {k}, n = {int(df['n'].iloc[0])}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("epsilon (log2 scale)")
        ax.grid(alpha=0.3, which="both")
    axes[0][0].set_ylabel("excess risk ||w_hat - w||^2 (mean, 95% CI)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    _savefig(fig, path)
    plt.close(fig)


def plot_shift(path, shift: pd.DataFrame) -> None:
    """Excess risk vs the private task's angle to the public subspace, 95% CIs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    s = summarise(shift, ["shift_degrees", "method"])
    for method in (*METHODS, *REFERENCES):
        g = s[s["method"] == method].sort_values("shift_degrees")
        color, marker, label = _STYLE[method]
        ax.errorbar(g["shift_degrees"], g["mean"], yerr=g["ci95"], color=color,
                    marker=marker or ".", linestyle="-" if marker else "--", capsize=3,
                    label=label)
    eps = shift.loc[np.isfinite(shift["epsilon"]), "epsilon"].iloc[0]
    ax.set_title(f"Private task outside the public subspace (D = {int(shift['D'].iloc[0])}, "
                 f"epsilon = {eps:g})", fontsize=9)
    ax.set_yscale("log")
    ax.set_xlabel("angle between private w and the public subspace (degrees)")
    ax.set_ylabel("excess risk (mean, 95% CI)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
