"""Privacy at run time: what the jobs of a real run opened, secret noise, secure mode.

* Every stage records the files it really opens (dpdeepsets.access, an audit hook installed
  by the stage scripts' entry point). Over the whole tiny run: no job read a results file it
  did not declare, and no job that writes a released artifact read private data unless it
  is a DP rule or a declared non-private reference. A released-artifact script made to open
  ``data/private.npz`` undeclared is caught by the same check.
* Two fresh runs without a key get different noise (a fresh key each); the same key gives
  the same releases; no published file holds a seed or the key.
* The tiny config's DP-SGD cells run end to end with privacy.noise=secure (no torchcsprng).
"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpdeepsets.access import undeclared_reads
from dpdeepsets.dag import parse_dryrun_jobs

from tests.workflow.test_privacy_dag import DP_RULES, EVALUATION_RULES, NONPRIVATE_REFERENCE_RULES, RELEASED_RULES

ROOT = Path(__file__).resolve().parents[2]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
PRIVATE = ("data/private.npz", "embeddings/private.npy", "subsets/private.npz",
           "eval/private_sets.npz")


def _jobs(results: Path) -> list[dict]:
    proc = subprocess.run([*SNAKEMAKE, "-n", "--forceall", "--configfile", "config/test.yaml",
                           "--config", f"results_dir={results}"], cwd=ROOT, capture_output=True,
                          text=True, check=True)
    return parse_dryrun_jobs(proc.stdout)


def _record(job) -> dict:
    [log] = job["log"]
    return json.loads(Path(log + ".access.json").read_text())


def _private_reads(record, results: Path) -> list[str]:
    private = {str((results / p).resolve()) for p in PRIVATE}
    return [p for p in record["read"] if p in private or "/epsinf_" in p]


@pytest.mark.slow
def test_every_job_read_only_what_it_declared(tiny_run):
    jobs = [j for j in _jobs(tiny_run) if j["log"]]
    recorded = [j for j in jobs if Path(j["log"][0] + ".access.json").exists()]
    # every stage script records (noise_key and inception_onnx are `python -m` tools)
    assert {j["rule"] for j in jobs} - {j["rule"] for j in recorded} <= {"noise_key", "inception_onnx"}
    for job in recorded:
        record = _record(job)
        bad = undeclared_reads(record, job["input"], job["output"], str(tiny_run))
        assert not bad, (job["rule"], job["wildcards"], bad)
    # the record is not empty: the release really read the private embeddings
    release = next(j for j in recorded if j["rule"] == "release_embedding")
    assert any(p.endswith("embeddings/private.npy") for p in _record(release)["read"])


@pytest.mark.slow
def test_released_artifacts_read_private_data_only_in_dp_rules(tiny_run):
    jobs = [j for j in _jobs(tiny_run) if j["log"] and Path(j["log"][0] + ".access.json").exists()]
    readers = set()
    for job in jobs:
        if _private_reads(_record(job), tiny_run):
            readers.add(job["rule"])
            if job["rule"] in RELEASED_RULES:
                assert job["rule"] in NONPRIVATE_REFERENCE_RULES, job
    assert readers <= DP_RULES | EVALUATION_RULES | NONPRIVATE_REFERENCE_RULES | {"embed", "build_subsets"}
    assert {"release_embedding", "fit_baseline", "private_set_features"} <= readers


@pytest.mark.slow
def test_an_undeclared_private_read_is_caught(tiny_run, tmp_path):
    """generate_lora made to open data/private.npz without declaring it: the record shows it."""
    script = tmp_path / "generate_lora.py"
    text = (ROOT / "workflow/scripts/generate_lora.py").read_text()
    anchor = "    releases = [read_json(r) for r in args.release]\n"
    assert anchor in text
    script.write_text(text.replace(anchor, anchor + f"    np.load({str(tiny_run / 'data/private.npz')!r})\n"))
    job = next(j for j in _jobs(tiny_run) if j["rule"] == "generate_lora")
    out = tmp_path / "adapters"
    args = [a for k, v in (("--bank", "public_loras.safetensors"), ("--hypernet", "hypernet.pt"),
                           ("--embeddings", "embeddings/public.npy"), ("--subsets", "subsets/public.npz"))
            for a in (k, next((i for i in job["input"] if i.endswith(v)), None)) if
            next((i for i in job["input"] if i.endswith(v)), None)]
    releases = [i for i in job["input"] if "/release/" in i]
    access = tmp_path / "access.json"
    subprocess.run([sys.executable, str(script), "--method", job["wildcards"]["method"], *args,
                    "--release", *releases, "--out", *[str(out / str(i)) for i in range(len(releases))]],
                   cwd=ROOT, check=True, capture_output=True,
                   env={**__import__("os").environ, "DPDEEPSETS_ACCESS_LOG": str(access)})
    record = json.loads(access.read_text())
    assert undeclared_reads(record, job["input"], job["output"], str(tiny_run)) == [
        str((tiny_run / "data/private.npz").resolve())]
    assert _private_reads(record, tiny_run)


def _releases(results: Path) -> dict:
    return {p.name: json.loads(p.read_text()) for p in sorted((results / "release" / "p0").glob("*.json"))}


@pytest.mark.slow
def test_no_key_gives_fresh_noise_and_the_same_key_the_same(tmp_path, run_tiny_config):
    """Only the releases of p0 (and what they need): cheap stages, no training."""
    targets = [str(tmp_path / name / "release/p0/eps1_seed0.json") for name in ("a", "b", "c")]
    a = run_tiny_config(tmp_path / "a", None, targets[0])
    b = run_tiny_config(tmp_path / "b", None, targets[1])
    ra, rb = _releases(a), _releases(b)
    za, zb = (np.array(r["eps1_seed0.json"]["noisy_embedding"]) for r in (ra, rb))
    assert not np.array_equal(za, zb)  # a fresh key per results directory
    fa, fb = (r["eps1_seed0.json"]["ledger"]["key_fingerprint"] for r in (ra, rb))
    assert fa != fb
    c = run_tiny_config(tmp_path / "c", a / ".secret/noise.key", targets[2])  # a's key, given
    assert np.array_equal(za, np.array(_releases(c)["eps1_seed0.json"]["noisy_embedding"]))
    assert not (c / ".secret").exists()  # a given key is used, not copied


@pytest.mark.slow
def test_no_published_file_holds_a_seed_or_the_key(tiny_run, tiny_key):
    key_hex = tiny_key.read_text().strip()
    for path in tiny_run.rglob("*"):
        if path.is_file() and ".secret" not in path.parts and path.suffix in (".json", ".csv", ".log"):
            text = path.read_text(errors="replace")
            assert key_hex not in text, path
    for path in [*tiny_run.glob("release/**/*.json"), *tiny_run.glob("ledger/**/*.json")]:
        ledger = json.loads(path.read_text())["ledger"]
        assert not [k for k in ledger if "seed" in k.lower()], (path, ledger)
        assert ledger["noise_source"] in ("keyed", "none"), path


@pytest.mark.slow
def test_dpsgd_cells_run_in_secure_mode(tmp_path, run_tiny_config):
    """privacy.noise=secure end to end for the tiny config's DP-SGD cells (fresh OS entropy,
    opacus' floating-point mitigation; torchcsprng is not installed and not needed)."""
    import importlib.util

    assert importlib.util.find_spec("torchcsprng") is None
    results = tmp_path / "secure"
    cfg = tmp_path / "secure.yaml"
    cfg.write_text("privacy:\n  noise: secure\n")
    cells = [f"{results}/ledger/{m}/p0/eps{e}_seed0.json" for m in ("dpsgd", "public_ft_dpsgd", "pda_dpmd")
             for e in ("1", "16")]
    run_tiny_config(results, None, *cells, f"{results}/release/p0/eps1_seed0.json", extra=[str(cfg)])
    for f in cells:
        led = json.loads(Path(f).read_text())["ledger"]
        assert led["noise_source"] == "secure" and led["private"] is True
        assert led["accounted_epsilon"] <= led["epsilon"] * (1 + 1e-9)
    assert json.loads((results / "release/p0/eps1_seed0.json").read_text())["ledger"]["noise_source"] == "secure"
    assert not (results / ".secret").exists()  # secure mode needs no key
