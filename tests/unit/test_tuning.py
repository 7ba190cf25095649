"""Baseline hyperparameters: defaults, tuned overrides, and the tuning target's grid and choice."""

import importlib.util
import json
import math
import types
from pathlib import Path

import pandas as pd
import pytest
import yaml

from dpdeepsets import baselines, methods
from dpdeepsets.config import ConfigError, load_config, merge_configs, tuned_context, validate_config

ROOT = Path(__file__).resolve().parents[2]


def _tune_module():
    spec = importlib.util.spec_from_file_location("tune_baselines", ROOT / "workflow/scripts/tune_baselines.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cfg(**tuning):
    cfg = load_config(ROOT / "config/config.yaml")
    b = cfg["baselines"]
    b["tuned"] = []
    b["tuning"].update(tuning)
    return cfg


def test_tuned_entry_overrides_defaults_including_the_optimizer():
    b = _cfg()["baselines"]
    default = baselines.hyperparameters(b, "nonprivate", math.inf)
    assert default.source == "baselines defaults" and default.optimizer == b["optimizer"]
    b["tuned"] = [{"method": "nonprivate", "epsilon": "inf", "lr": 0.001, "steps": 150, "optimizer": "adam"},
                  {"method": "dpsgd", "epsilon": 4.0, "lr": 0.3}]
    np_ = baselines.hyperparameters(b, "nonprivate", math.inf)
    assert (np_.lr, np_.steps, np_.optimizer) == (0.001, 150, "adam") and "tuned" in np_.source
    dp = baselines.hyperparameters(b, "dpsgd", 4.0)
    assert dp.lr == 0.3 and dp.optimizer == b["optimizer"] and dp.steps == b["steps"]
    other = baselines.hyperparameters(b, "dpsgd", 1.0)  # no entry: the defaults
    assert other.lr == b["lr"] and other.source == "baselines defaults"


def test_candidates_are_the_union_of_the_grids_products():
    tune = _tune_module()
    b = _cfg(grids=[{"optimizer": ["adam"], "lr": [0.001, 0.003], "max_grad_norm": [0.001], "ema": [0.0, 0.9]},
                    {"optimizer": ["sgd"], "lr": [1.0], "max_grad_norm": [0.01]},
                    {"optimizer": ["adam"], "lr": [0.001], "max_grad_norm": [0.001], "ema": [0.0]}],  # a duplicate
             nonprivate_grids=[{"optimizer": ["adam"], "lr": [0.001, 0.01], "steps": [60, 150, 300]}])["baselines"]
    dp = tune.candidates(b, methods.get("dpsgd"))
    assert len(dp) == 4 + 1  # the duplicate counted once
    assert {c["optimizer"] for c in dp} == {"adam", "sgd"}
    ref = tune.candidates(b, methods.get("nonprivate"))
    assert len(ref) == 2 * 3 and {c["steps"] for c in ref} == {60, 150, 300}


def test_candidates_that_differ_in_ema_or_nonprivate_steps_share_one_fit():
    tune = _tune_module()
    cands = [{"lr": lr, "steps": st, "ema": e} for lr in (0.001, 0.01) for st in (60, 150) for e in (0.0, 0.9)]
    dp_groups = tune.fit_groups(cands, dp=True)  # DP: steps change the calibration, ema does not
    assert len(dp_groups) == 4 and all(len(m) == 2 for _, m in dp_groups)
    np_groups = tune.fit_groups(cands, dp=False)  # non-private: snapshots of the longest fit
    assert len(np_groups) == 2 and all(fit["steps"] == 150 and len(m) == 4 for fit, m in np_groups)


def _choose(tmp_path, frames, grid=(1.0, 4.0)):
    tune = _tune_module()
    files = []
    for i, df in enumerate(frames):
        files.append(tmp_path / f"{i}.csv")
        df.to_csv(files[-1], index=False)
    context = tuned_context(load_config(ROOT / "config/config.yaml"))
    args = types.SimpleNamespace(choose=[str(f) for f in files], out_chosen=str(tmp_path / "chosen.yaml"),
                                 out_table=str(tmp_path / "table.csv"), tuned_for=json.dumps(context),
                                 epsilons=json.dumps(list(grid)))
    tune.choose(args, log=types.SimpleNamespace(info=lambda *a, **k: None))
    return (yaml.safe_load((tmp_path / "chosen.yaml").read_text()), pd.read_csv(tmp_path / "table.csv"),
            (tmp_path / "chosen.yaml").read_text(), context)


def test_choose_picks_the_lowest_mean_proxy_fid_and_writes_valid_tuned_entries(tmp_path):
    proxies = ["q0", "q1", "q2", "q3"]
    dp = pd.DataFrame([
        {"method": "dpsgd", "proxy": q, "epsilon": 1.0, "optimizer": "adam", "lr": lr, "steps": 60,
         "max_grad_norm": 0.001, "ema": 0.0, "fid": fid + j, "kid": 0.01}
        for j, q in enumerate(proxies) for lr, fid in [(0.001, 80), (0.003, 74), (0.01, 74.5)]])
    ref = pd.DataFrame([
        {"method": "nonprivate", "proxy": q, "epsilon": math.inf, "lr": lr, "steps": 150,
         "optimizer": "adam", "fid": fid + 3 * j, "kid": 0.01}
        for j, q in enumerate(proxies) for lr, fid in [(0.001, 78), (0.01, 72)]])
    base = pd.DataFrame([{"method": "base", "proxy": q, "epsilon": 0.0, "fid": 90.0 + j, "kid": 0.02}
                         for j, q in enumerate(proxies)])
    chosen, table, text, context = _choose(tmp_path, [dp, ref, base])
    b = chosen["baselines"]
    assert b["tuned_for"] == context  # the settings it was tuned at, for the guard below
    by = {(e["method"], str(e["epsilon"])): e for e in b["tuned"]}
    e1 = by[("dpsgd", "1.0")]
    assert e1["lr"] == 0.003 and e1["proxy_fid"] == 75.5 and e1["optimizer"] == "adam"
    assert e1["proxy_fid_lo"] < 75.5 < e1["proxy_fid_hi"]
    # 0.01 is 0.5 worse on every proxy: a paired difference with zero spread is not a tie;
    # 0.001 is worse by 6 on every proxy: not tied either
    assert e1["tied"] == 0
    # epsilon 4 was not tuned: the nearest tuned epsilon's values, and the provenance says so
    e4 = by[("dpsgd", "4.0")]
    assert e4["lr"] == 0.003 and "tuned at epsilon 1" in e4["provenance"]
    assert by[("nonprivate", "inf")]["lr"] == 0.01
    assert "base model on the proxy sets: FID 91.50" in text
    cfg = load_config(ROOT / "config/config.yaml")
    cfg["baselines"]["tuned"] = b["tuned"]
    validate_config(cfg)  # the schema accepts what the target writes
    assert baselines.hyperparameters(cfg["baselines"], "dpsgd", 4.0).lr == 0.003
    assert table.chosen.sum() == 2 and set(table.method) == {"dpsgd", "nonprivate"}


def test_choose_reports_a_flat_surface(tmp_path):
    """Candidates whose paired difference to the chosen one is within the noise count as tied."""
    rng = __import__("numpy").random.default_rng(0)
    dp = pd.DataFrame([
        {"method": "dpsgd", "proxy": f"q{j}", "epsilon": 1.0, "optimizer": "adam", "lr": lr,
         "max_grad_norm": 0.001, "fid": 80 + 5 * j + rng.normal(0, 2), "kid": 0.01}
        for j in range(4) for lr in (0.001, 0.003, 0.01)])
    chosen, table, _, _ = _choose(tmp_path, [dp], grid=(1.0,))
    assert chosen["baselines"]["tuned"][0]["tied"] == 2
    assert table["tied_with_chosen"].sum() == 2


def test_choose_writes_private_evolution_entries(tmp_path):
    pe = pd.DataFrame([
        {"method": "private_evolution", "proxy": f"q{j}", "epsilon": 1.0, "iterations": it,
         "threshold": h, "fid": 90 - it - h / 10 + j, "kid": 0.01}
        for j in range(3) for it in (1, 2) for h in (0.0, 4.0)])
    chosen, _, _, _ = _choose(tmp_path, [pe], grid=(1.0,))
    (entry,) = chosen["private_evolution"]["tuned"]
    assert (entry["iterations"], entry["threshold"]) == (2, 4.0) and chosen["baselines"]["tuned"] == []
    cfg = load_config(ROOT / "config/config.yaml")
    cfg["private_evolution"]["tuned"] = chosen["private_evolution"]["tuned"]
    validate_config(cfg)
    from dpdeepsets import private_evolution as PE

    params, source = PE.params_for(cfg["private_evolution"], 1.0, 25, 64)
    assert (params.iterations, params.threshold, params.population) == (2, 4.0, 64) and "tuned" in source


def test_default_config_carries_tuned_values_with_provenance():
    cfg = load_config(ROOT / "config/config.yaml")
    tuned = cfg["baselines"]["tuned"]
    fitted = {m for m in methods.names(producer="fit_baseline") if not methods.get(m).bank_recipe}
    assert {e["method"] for e in tuned} == fitted
    eps = {float(e) for e in cfg["privacy"]["epsilons"]}
    for m in fitted - {"nonprivate"}:
        assert {float(e["epsilon"]) for e in tuned if e["method"] == m} == eps, m
    pe = cfg["private_evolution"]["tuned"]
    assert {float(e["epsilon"]) for e in pe} == eps
    assert all("proxy_fid" in e and "provenance" in e for e in tuned + pe)


@pytest.mark.parametrize("bad", [{"optimizer": "rmsprop"}])
def test_tuned_entry_with_an_unknown_optimizer_is_refused(bad):
    cfg = load_config(ROOT / "config/config.yaml")
    cfg["baselines"]["tuned"] = [{"method": "nonprivate", "epsilon": "inf", **bad}]
    with pytest.raises(Exception, match="rmsprop"):
        validate_config(cfg)


def _raw(path):
    return yaml.safe_load((ROOT / path).read_text())


@pytest.mark.parametrize("change,key", [({"subsets": {"set_size": 24}}, "subsets.set_size=128"),
                                        ({"data": {"image_size": 28}}, "data.image_size=16"),
                                        ({"lora": {"rank": 8}}, "lora.rank=4"),
                                        ({"privacy": {"delta": 1.0e-6}}, "privacy.delta=1e-05")])
def test_tuned_values_are_refused_at_another_scale(change, key):
    """The default's tuned entries were chosen at its scale; a config that changes one of the
    settings they depend on must not inherit them silently."""
    cfg = merge_configs(_raw("config/config.yaml"), change)
    with pytest.raises(ConfigError, match=rf"baselines.tuned was chosen at {key}.*tune_baselines"):
        validate_config(cfg)
    cfg = merge_configs(_raw("config/config.yaml"), change)
    cfg["baselines"]["tuned"] = cfg["private_evolution"]["tuned"] = []  # the way out the message names
    validate_config(cfg)


def test_default_tuned_for_matches_the_default_config():
    cfg = load_config(ROOT / "config/config.yaml")
    assert cfg["baselines"]["tuned_for"] == tuned_context(cfg) and cfg["baselines"]["tuned"]


def test_an_unknown_tuned_for_key_is_refused():
    cfg = _raw("config/config.yaml")
    cfg["baselines"]["tuned_for"]["base.seed"] = 0
    with pytest.raises(ConfigError, match="tuned_for.base.seed is not a setting"):
        validate_config(cfg)
