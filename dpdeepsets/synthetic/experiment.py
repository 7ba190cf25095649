"""The whole comparison (run_experiment), its noise sources per cell, and its tables."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from .. import noise as noise_mod
from .methods import (DPSGD_METHODS, NoiseFor, dpdeepsets_fit, fit_public, fit_sgd_method,
                      tune_dpsgd)
from .tasks import TaskFamily, excess_risk, least_squares, subspace_least_squares

log = logging.getLogger(__name__)

METHODS = ("dpdeepsets", *DPSGD_METHODS)
REFERENCES = ("least_squares", "zero", "oracle_subspace_ls")
BASELINES = DPSGD_METHODS  # what DP-DeepSets is divided by in the ratio table


def noise_factory(kind: str, key_file: str | os.PathLike | None, seed: int) -> tuple[NoiseFor, dict]:
    """(identity fields -> NoiseSource, what the summary may say about the source).

    ``keyed``: HMAC of the secret key and the cell identity {experiment: synthetic, seed,
    **fields}, so every (purpose, method, D, epsilon, repetition, part, shift) cell has
    streams of its own and the same key reproduces them; ``secure``: fresh OS entropy
    per cell. The key is read once; nothing derived from it is returned but its fingerprint.
    """
    if kind == "keyed":
        if key_file is None:
            raise noise_mod.NoiseKeyError("synthetic.noise=keyed needs a key file (--key)")
        key = noise_mod.load_key(key_file)  # refuses a missing, malformed or readable file

        def make(**fields):
            return noise_mod.KeyedNoise(key, noise_mod.cell_identity(
                experiment="synthetic", seed=int(seed), **fields))
        return make, {"noise_source": "keyed", "key_fingerprint": noise_mod.key_fingerprint(key)}
    if kind == "secure":
        return (lambda **fields: noise_mod.SecureNoise()), noise_mod.SecureNoise().ledger()
    raise noise_mod.NoiseKeyError(f"synthetic.noise must be one of {noise_mod.NOISE_SOURCES}, got {kind!r}")


def _references(family: TaskFamily, x, y, w) -> list[dict]:
    return [{"method": "least_squares", "excess_risk": excess_risk(least_squares(x, y), w)},
            {"method": "zero", "excess_risk": excess_risk(np.zeros_like(w), w)},
            {"method": "oracle_subspace_ls",
             "excess_risk": excess_risk(subspace_least_squares(x, y, family.basis), w)}]


def _private_methods(public, tuned, cfg, x, y, w, eps, noise_for: NoiseFor, cell: dict) -> list[dict]:
    """DP-DeepSets, DP-SGD and subspace DP-SGD on one private task; ``cell`` (D, rep, part,
    shift) and the method name make each run's noise identity, so no two runs share noise."""
    s = cfg["dpsgd"]
    rows = []
    source = noise_for(purpose="private", method="dpdeepsets", epsilon=eps, **cell)
    w_hat, ledger = dpdeepsets_fit(public, x, y, epsilon=eps, delta=cfg["delta"],
                                   adjacency=cfg["adjacency"], n=cfg["n"], noise=source)
    rows.append({"method": "dpdeepsets", "excess_risk": excess_risk(w_hat, w),
                 "sigma": ledger["sigma"], "sensitivity": ledger["sensitivity"],
                 "clip_norm": ledger["clip_norm"], "epsilon_spent": ledger["epsilon"],
                 "adjacency": ledger["adjacency"], "accountant": ledger["mechanism"],
                 "noise_source": ledger["noise_source"]})
    for method in DPSGD_METHODS:
        clip, lr = tuned[(method, eps)]
        source = noise_for(purpose="private", method=method, epsilon=eps, **cell)
        w_hat, info = fit_sgd_method(method, public, x, y, epsilon=eps, delta=cfg["delta"],
                                     clip_norm=clip, lr=lr, epochs=s["epochs"],
                                     batch_size=s["batch_size"], accountant=s["accountant"],
                                     noise=source)
        rows.append({"method": method, "excess_risk": excess_risk(w_hat, w), "clip_norm": clip,
                     "lr": lr, "noise_multiplier": info["noise_multiplier"],
                     "sample_rate": info["sample_rate"], "steps": info["steps"],
                     "epsilon_spent": info["epsilon_spent"], "adjacency": "add_remove",
                     "accountant": info["accountant"], "noise_source": source.kind})
    return rows


@dataclass
class Results:
    """What :func:`run_experiment` returns; one row per estimate in ``excess`` / ``shift``.

    ``excess`` and ``shift`` columns: D, k, proj_dim, n, epsilon (inf for the non-private
    references), delta, rep, shift_degrees, method, excess_risk, and where they apply
    sigma / sensitivity / clip_norm (DP-DeepSets' release, from its ledger), clip_norm / lr /
    noise_multiplier / sample_rate / steps (DP-SGD), epsilon_spent (the ledger's epsilon for
    DP-DeepSets, the privacy module's epsilon of opacus' recorded steps for DP-SGD),
    adjacency, accountant (the release's mechanism for DP-DeepSets), noise_source.
    ``tuning``: every DP-SGD grid point of both DP-SGD methods scored on public tasks
    (chosen = the one used). ``public``: per D, what was learned from public tasks (d, clip
    norm, eigenvalues, hypernetwork loss). ``noise``: the source (kind, key fingerprint).
    """

    excess: pd.DataFrame
    shift: pd.DataFrame
    tuning: pd.DataFrame
    public: pd.DataFrame
    noise: dict


_COLUMNS = ["D", "k", "proj_dim", "n", "epsilon", "delta", "rep", "shift_degrees", "method",
            "excess_risk", "sigma", "sensitivity", "clip_norm", "lr", "noise_multiplier",
            "sample_rate", "steps", "epsilon_spent", "adjacency", "accountant", "noise_source"]


def run_experiment(cfg: dict, key_file: str | os.PathLike | None = None) -> Results:
    """The whole comparison for the ``synthetic`` config section (schema defaults filled).

    ``key_file``: the secret noise key (needed when ``cfg["noise"]`` is ``keyed``).
    """
    eps_grid = [float(e) for e in cfg["epsilons"]]
    shift_eps = float(cfg["shift_epsilon"])
    if any(cfg["k"] >= d for d in [*cfg["dims"], cfg["shift_dim"]]):
        raise ValueError(f"synthetic.k={cfg['k']} must be smaller than every D in synthetic.dims "
                         f"{cfg['dims']} and synthetic.shift_dim={cfg['shift_dim']}")
    noise_for, noise_info = noise_factory(cfg["noise"], key_file, cfg["seed"])
    families, publics, tuned, grids = {}, {}, {}, []

    def world(dim):
        if dim not in publics:
            families[dim] = TaskFamily(dim, cfg["k"], cfg["noise_std"], cfg["seed"])
            publics[dim] = fit_public(families[dim], cfg, sorted(set(eps_grid) | {shift_eps}))
            tuned[dim] = {}
        return families[dim], publics[dim]

    def tune(dim, eps):
        for method in DPSGD_METHODS:
            if (method, eps) not in tuned[dim]:
                best, grid = tune_dpsgd(families[dim], publics[dim], cfg, eps, noise_for, method)
                tuned[dim][(method, eps)] = best
                grid["chosen"] = (grid["clip_norm"] == best[0]) & (grid["lr"] == best[1])
                grids.append(grid.assign(D=dim, epsilon=eps))

    def base(dim, rep, shift, public):
        return {"D": dim, "k": cfg["k"], "proj_dim": public.proj_dim, "n": cfg["n"],
                "delta": cfg["delta"], "rep": rep, "shift_degrees": float(shift)}

    rows = []
    for dim in cfg["dims"]:
        family, public = world(dim)
        for eps in eps_grid:
            tune(dim, eps)
        for rep in range(cfg["repetitions"]):
            x, y, w = family.private_task(rep, cfg["n"])
            for r in _references(family, x, y, w):
                rows.append({**base(dim, rep, 0, public), "epsilon": math.inf, **r})
            for eps in eps_grid:
                cell = {"D": dim, "rep": rep, "part": "excess", "shift_degrees": 0.0}
                for r in _private_methods(public, tuned[dim], cfg, x, y, w, eps, noise_for, cell):
                    rows.append({**base(dim, rep, 0, public), "epsilon": eps, **r})
        log.info("D=%d done", dim)

    shift_rows = []
    dim = cfg["shift_dim"]
    family, public = world(dim)
    tune(dim, shift_eps)
    for deg in cfg["shift_degrees"]:
        for rep in range(cfg["repetitions"]):
            x, y, w = family.private_task(rep, cfg["n"], deg)
            for r in _references(family, x, y, w):
                shift_rows.append({**base(dim, rep, deg, public), "epsilon": math.inf, **r})
            cell = {"D": dim, "rep": rep, "part": "shift", "shift_degrees": float(deg)}
            for r in _private_methods(public, tuned[dim], cfg, x, y, w, shift_eps, noise_for, cell):
                shift_rows.append({**base(dim, rep, deg, public), "epsilon": shift_eps, **r})
    log.info("shift experiment done (D=%d, epsilon=%g)", dim, shift_eps)
    public_rows = [{"D": d, "proj_dim": p.proj_dim, "clip_norm": p.clip_norm,
                    "top_eigenvalues": " ".join(f"{v:.4g}" for v in p.eigenvalues[:p.proj_dim + 2]),
                    "hypernet_loss_first": p.loss_first, "hypernet_loss_last": p.loss_last,
                    "train_sigmas": " ".join(f"{e:g}:{v:.4g}" for e, v in p.train_sigmas.items())}
                   for d, p in sorted(publics.items())]
    tuning = pd.concat(grids, ignore_index=True)[["D", "epsilon", "method", "clip_norm", "lr",
                                                   "public_risk", "chosen"]]
    return Results(pd.DataFrame(rows).reindex(columns=_COLUMNS),
                   pd.DataFrame(shift_rows).reindex(columns=_COLUMNS), tuning,
                   pd.DataFrame(public_rows), noise_info)


# --------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------
def summarise(df: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Mean excess risk with a 95% normal confidence interval (1.96 standard errors)."""
    g = df.groupby(by, dropna=False)["excess_risk"]
    s = g.agg(["mean", "std", "count"]).reset_index()
    s["ci95"] = 1.96 * s["std"].fillna(0.0) / np.sqrt(s["count"])
    return s


def ratio_intervals(df: pd.DataFrame, baseline: str, by=("D", "epsilon")) -> pd.DataFrame:
    """Mean DP-DeepSets excess risk / mean ``baseline`` excess risk, with a paired 95% CI.

    Paired over repetitions (both methods see the same private task): with a_r, b_r the two
    risks of repetition r and R = mean(a) / mean(b), the delta method on log R gives
    se = sd(a_r / mean(a) - b_r / mean(b)) / sqrt(reps); the interval is R exp(+-1.96 se).
    R < 1: DP-DeepSets has the lower risk. Columns: *by, ratio, lo, hi, reps.
    """
    by = list(by)
    sub = df[df["method"].isin(["dpdeepsets", baseline])]
    p = sub.pivot_table(index=[*by, "rep"], columns="method", values="excess_risk")
    rows = []
    for keys, g in p.groupby(level=by):
        a, b = g["dpdeepsets"].to_numpy(), g[baseline].to_numpy()
        ratio = a.mean() / b.mean()
        se = np.std(a / a.mean() - b / b.mean(), ddof=1) / math.sqrt(len(a)) if len(a) > 1 else 0.0
        keys = keys if isinstance(keys, tuple) else (keys,)
        rows.append({**dict(zip(by, keys)), "ratio": ratio, "lo": ratio * math.exp(-1.96 * se),
                     "hi": ratio * math.exp(1.96 * se), "reps": len(a)})
    return pd.DataFrame(rows)


def ratio_table(df: pd.DataFrame, baseline: str = "dpsgd") -> pd.DataFrame:
    """Mean DP-DeepSets / mean ``baseline`` excess risk; rows D, columns epsilon."""
    r = ratio_intervals(df, baseline)
    return r.pivot_table(index="D", columns="epsilon", values="ratio")


def _ratio_cells(df: pd.DataFrame, baseline: str) -> pd.DataFrame:
    r = ratio_intervals(df, baseline)
    r["cell"] = [f"{v:.2f} [{lo:.2f}, {hi:.2f}]" for v, lo, hi in zip(r["ratio"], r["lo"], r["hi"])]
    return r.pivot_table(index="D", columns="epsilon", values="cell", aggfunc="first")


def format_tables(df: pd.DataFrame, shift: pd.DataFrame, public: pd.DataFrame | None = None,
                  noise: dict | None = None) -> str:
    """Human-readable summary: mean ± CI per method, both ratio tables, the shift table."""
    def fmt(s, index):
        s = s.copy()
        s["cell"] = [f"{m:.4f} ± {c:.4f}" for m, c in zip(s["mean"], s["ci95"])]
        return s.pivot_table(index=index, columns="method", values="cell", aggfunc="first")

    reps = int(df["rep"].nunique())
    with pd.option_context("display.width", 250, "display.max_columns", 20):
        lines = [f"Mean excess risk ± 95% CI (1.96 s.e. over {reps} repetitions); "
                 "references (not private) at epsilon = inf",
                 fmt(summarise(df, ["D", "epsilon", "method"]), ["D", "epsilon"]).to_string(),
                 ""]
        for baseline, what in (("dpsgd", "DP-SGD in all D coordinates"),
                               ("dpsgd_subspace", "DP-SGD in the public subspace span(P)")):
            lines += [f"Ratio mean DP-DeepSets / mean {baseline} excess risk ({what}); "
                      f"< 1: DP-DeepSets better; [paired 95% CI over {reps} repetitions] "
                      "(rows D, columns epsilon)",
                      _ratio_cells(df, baseline).to_string(), ""]
        if len(shift):
            eps = shift.loc[np.isfinite(shift["epsilon"]), "epsilon"].iloc[0]
            lines += [f"Shift: private w rotated out of the public subspace (D="
                      f"{int(shift['D'].iloc[0])}, DP methods at epsilon={eps:g})",
                      fmt(summarise(shift, ["shift_degrees", "method"]),
                          ["shift_degrees"]).to_string(), ""]
        if public is not None and len(public):
            lines += ["Learned from public tasks only (DP-DeepSets; P is shared with dpsgd_subspace)",
                      public.to_string(index=False, float_format=lambda v: f"{v:.4g}"), ""]
        if noise:
            lines += ["Privacy noise: " + ", ".join(f"{k} {v}" for k, v in noise.items())]
    return "\n".join(lines)
