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


def test_candidates_cover_the_grid_and_the_nonprivate_adam_grid():
    tune = _tune_module()
    b = _cfg(lr=[0.1, 1.0], max_grad_norm=[0.02], steps=[20], nonprivate_steps=[20, 150],
             nonprivate_adam_lr=[0.001, 0.01])["baselines"]
    dp = tune._candidates(b, methods.get("dpsgd"))
    assert sorted(c["lr"] for c in dp) == [0.1, 1.0] and all("optimizer" not in c for c in dp)
    ref = tune._candidates(b, methods.get("nonprivate"))
    assert len(ref) == 2 * 2 + 2 * 2
    assert {(c["optimizer"], c["lr"], c["steps"]) for c in ref if c["optimizer"] == "adam"} == {
        ("adam", 0.001, 20), ("adam", 0.001, 150), ("adam", 0.01, 20), ("adam", 0.01, 150)}


def test_choose_picks_the_lowest_mean_proxy_fid_and_writes_valid_tuned_entries(tmp_path):
    tune = _tune_module()
    dp = pd.DataFrame([
        {"method": "dpsgd", "proxy": q, "epsilon": 1.0, "lr": lr, "steps": 20, "max_grad_norm": 0.02,
         "batch_size": 128, "noise_multiplicity": 1, "fid": fid, "kid": 0.01}
        for q, lr, fid in [("q0", 0.1, 80), ("q1", 0.1, 70), ("q0", 1.0, 74), ("q1", 1.0, 77)]])
    ref = pd.DataFrame([
        {"method": "nonprivate", "proxy": "q0", "epsilon": math.inf, "lr": lr, "steps": 150,
         "batch_size": 128, "noise_multiplicity": 1, "optimizer": opt, "fid": fid, "kid": 0.01}
        for lr, opt, fid in [(1.0, "sgd", 78), (0.001, "adam", 72)]])
    files = [tmp_path / "dp.csv", tmp_path / "ref.csv"]
    dp.to_csv(files[0], index=False)
    ref.to_csv(files[1], index=False)
    context = tuned_context(load_config(ROOT / "config/config.yaml"))
    args = types.SimpleNamespace(choose=[str(f) for f in files], out_chosen=str(tmp_path / "chosen.yaml"),
                                 out_table=str(tmp_path / "table.csv"), tuned_for=json.dumps(context))
    tune.choose(args, log=types.SimpleNamespace(info=lambda *a, **k: None))
    chosen = yaml.safe_load((tmp_path / "chosen.yaml").read_text())["baselines"]
    tuned = chosen["tuned"]
    assert chosen["tuned_for"] == context  # the settings it was tuned at, for the guard below
    by = {e["method"]: e for e in tuned}
    assert by["dpsgd"]["lr"] == 0.1 and by["dpsgd"]["proxy_fid"] == 75.0  # mean over q0, q1: 75 < 75.5
    assert by["nonprivate"]["optimizer"] == "adam" and by["nonprivate"]["epsilon"] == "inf"
    assert "optimizer" not in by["dpsgd"]
    cfg = load_config(ROOT / "config/config.yaml")
    cfg["baselines"]["tuned"] = tuned
    validate_config(cfg)  # the schema accepts what the target writes
    assert baselines.hyperparameters(cfg["baselines"], "nonprivate", math.inf).optimizer == "adam"
    table = pd.read_csv(tmp_path / "table.csv")
    assert table.chosen.sum() == 2


def test_default_config_carries_tuned_values_with_provenance():
    cfg = load_config(ROOT / "config/config.yaml")
    tuned = cfg["baselines"]["tuned"]
    fitted = set(methods.names(producer="fit_baseline"))
    assert {e["method"] for e in tuned} == fitted
    eps = {float(e) for e in cfg["privacy"]["epsilons"]}
    for m in fitted - {"nonprivate"}:
        assert {float(e["epsilon"]) for e in tuned if e["method"] == m} == eps, m
    assert all("proxy_fid" in e for e in tuned)


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
    cfg["baselines"]["tuned"] = []  # the way out the message names
    validate_config(cfg)


def test_default_tuned_for_matches_the_default_config():
    cfg = load_config(ROOT / "config/config.yaml")
    assert cfg["baselines"]["tuned_for"] == tuned_context(cfg) and cfg["baselines"]["tuned"]


def test_an_unknown_tuned_for_key_is_refused():
    cfg = _raw("config/config.yaml")
    cfg["baselines"]["tuned_for"]["base.seed"] = 0
    with pytest.raises(ConfigError, match="tuned_for.base.seed is not a setting"):
        validate_config(cfg)
