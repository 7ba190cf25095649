"""Structural privacy guarantee, read off the Snakemake job DAG of the default config.

Model (file level; dpdeepsets.dag.parse_dryrun_jobs / job_edges / check_private_flow):

* The private data enters the DAG as ``{results_dir}/data/private.npz`` (PRIVATE_FILES),
  written by ``prepare_data``, the data owner's split of the raw source into disjoint pools
  (the public pool is chosen by a data-independent seeded permutation, so it carries no
  private rows).  The *private sources* are the jobs that read a private file directly.
* A job of a DP rule (DP_RULES: the release, or a DP-SGD-family rule with an accountant)
  turns private inputs into an accounted, differentially private output: the data flow stops
  there.  Every other job that reads private-derived files produces private-derived files.
* Released artifacts (RELEASED_RULES): the generated adapters, the samples and the sample
  figure (``sample_figure``, which reads sample files only).  They must not
  be reachable from a private source except through a DP job.  One declared exception: the
  epsilon = inf cells (``privacy.nonprivate_reference``) run the release with sigma = 0, so
  their release is *not* DP and their adapter and samples are private-derived, non-private
  reference artifacts, made by rules of their own (NONPRIVATE_REFERENCE_RULES); the test
  checks that they are exactly those rules' jobs.  Which methods exist, and which are DP, comes
  from the method registry (dpdeepsets.methods).
* Evaluation (EVALUATION_RULES) scores samples against the private sets.  Its outputs are
  private-derived and are not differentially private; they are evaluation output (the metric
  table and the FID/KID plots, written by ``report``), and nothing released may depend on
  them.  The sample figure leaves out the epsilon = inf reference samples.

The checks run on a dry run (``snakemake -n --forceall``) of a copy of the workflow in a
temporary directory, so nothing in the repository (not even ``.snakemake/``) is touched.  The
last tests feed the same checker a broken DAG (a synthetic edge, and a copy of the workflow
whose ``generate_lora`` reads the private embeddings) and show that it reports the violation.
"""

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from dpdeepsets import methods as M
from dpdeepsets.dag import (
    check_private_flow,
    job_edges,
    job_label,
    parse_dryrun_jobs,
    rule_of,
)

ROOT = Path(__file__).resolve().parents[2]

# Rules whose output is a differentially private release of their private inputs, each with an
# accountant (release_embedding: analytic Gaussian; the rule that fits the registry's dp_sgd
# methods: DP-SGD accounted by dpdeepsets.privacy; the rule of its dp_samples methods, Private
# Evolution: T Gaussian vote histograms composed as Gaussian DP). All write ledger entries
# that privacy_ledger.csv lists.
DP_RULES = frozenset({"release_embedding"} | {"fit_baseline" for _ in M.names(privacy="dp_sgd")}
                     | {"private_evolution" for _ in M.names(privacy="dp_samples")})
# The epsilon = inf cells (privacy.nonprivate_reference) and the nonprivate fit: NON-private
# references, in rules of their own (no job writes DP and non-private artifacts together).
NONPRIVATE_REFERENCE_RULES = frozenset({"release_reference", "generate_lora_reference",
                                        "sample_reference", "fit_nonprivate"})
# Rules whose outputs are published: adapters, samples (and their features), the figure.
RELEASED_RULES = frozenset({"generate_lora", "generate_public", "sample", "sample_public",
                            "sample_figure"}) | NONPRIVATE_REFERENCE_RULES - {"fit_nonprivate",
                                                                           "release_reference"}
# Rules that read private data to *score*; their outputs are evaluation output, not releases.
EVALUATION_RULES = frozenset({"private_set_features", "score", "report"})
# Private preprocessing inside the trust boundary: may read private data, must only feed DP or
# evaluation rules (and only for the private pool).
PRIVATE_PREP_RULES = frozenset({"embed", "build_subsets"})
# Public rules (read public data only).
PUBLIC_RULES = frozenset({"prepare_data", "pretrain_base", "fit_embedder", "fit_bank_shard",
                          "gather_bank", "train_hypernet", "fit_public_pool_lora",
                          "fit_digit_classifier", "inception_onnx"})
# The secret noise key: read by the DP rules only (and the noise-free reference release).
SECRET_RULES = frozenset({"noise_key"})
TARGET_RULES = frozenset({"all"})
PRIVATE_FILES = ("data/private.npz",)  # relative to results_dir
LEDGER_FILE = "privacy_ledger.csv"  # relative to results_dir; written by the accountant


def dp_kind(label: str) -> str:
    """The rule of a job for the data-flow check: a reference rule is not DP."""
    rule = rule_of(label)
    if rule in NONPRIVATE_REFERENCE_RULES:
        return rule + " (non-private reference)"
    return rule


# The released rules as dp_kind names them (a reference rule's jobs are released too).
RELEASED_KINDS = RELEASED_RULES | {dp_kind(r) for r in RELEASED_RULES}


def _is_reference(label: str) -> bool:
    return rule_of(label) in NONPRIVATE_REFERENCE_RULES


def _copy_workflow(dst: Path) -> Path:
    dst.mkdir(parents=True)
    shutil.copy2(ROOT / "Snakefile", dst / "Snakefile")
    for sub in ("workflow", "config", "profiles"):
        shutil.copytree(ROOT / sub, dst / sub, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


# The default config evaluates every registered method; this override keeps DP-DeepSets only.
BASELINES_OFF = "evaluation:\n  methods: [dpdeepsets, base]\n"


def _dry_run(workdir: Path, results: Path, baselines: bool = False) -> str:
    """Dry run (-n) of the whole default DAG; never executes a job."""
    configs = ["config/config.yaml"]
    if not baselines:
        (workdir / "config" / "baselines_off.yaml").write_text(BASELINES_OFF)
        configs.append("config/baselines_off.yaml")
    proc = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--forceall", "--configfile", *configs,
         "--config", f"results_dir={results}"],
        cwd=workdir, capture_output=True, text=True, timeout=300, check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _job_stats(text: str) -> Counter:
    block = text.split("Job stats:", 1)[1]
    counts = Counter()
    for line in block.splitlines()[3:]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


class Dag:
    def __init__(self, text: str, results: Path, baselines: bool = False):
        self.baselines = baselines
        self.text = text
        self.results = results
        self.jobs = parse_dryrun_jobs(text)
        self.edges = job_edges(self.jobs)
        private = {str(results / f) for f in PRIVATE_FILES}
        self.sources = {job_label(j) for j in self.jobs if private & set(j["input"])}
        self.labels = {job_label(j) for j in self.jobs}

    def of_rule(self, *rules):
        return sorted(lbl for lbl in self.labels if rule_of(lbl) in rules)

    def ancestors(self, node):
        pred = {}
        for a, b in self.edges:
            pred.setdefault(b, set()).add(a)
        seen, stack = set(), [node]
        while stack:
            for p in pred.get(stack.pop(), ()):
                if p not in seen:
                    seen.add(p)
                    stack.append(p)
        return seen

    def tainted(self):
        """Jobs that read private-derived data not protected by a DP step."""
        succ = {}
        for a, b in self.edges:
            succ.setdefault(a, set()).add(b)
        seen = {s for s in self.sources if dp_kind(s) not in DP_RULES}
        stack = list(seen)
        while stack:
            for nxt in succ.get(stack.pop(), ()):
                if nxt not in seen and dp_kind(nxt) not in DP_RULES:
                    seen.add(nxt)
                    stack.append(nxt)
        return seen


def _build_dag(tmp: Path, edit=None, baselines: bool = False) -> Dag:
    wf = _copy_workflow(tmp / "wf")
    if edit is not None:
        edit(wf)
    results = tmp / "results"
    return Dag(_dry_run(wf, results, baselines), results, baselines)


@pytest.fixture(scope="module", params=["default", "no_baselines"])
def dag(request, tmp_path_factory):
    """The default config's DAG (every method), and the same with the baselines switched off."""
    return _build_dag(tmp_path_factory.mktemp("dag"), baselines=request.param == "default")


def test_parser_sees_every_job(dag):
    assert Counter(rule_of(lbl) for lbl in dag.labels) == _job_stats(dag.text)
    assert len(dag.labels) == len(dag.jobs)  # labels are unique per job
    for j in dag.jobs:
        assert j["jobid"] is not None and (j["output"] or j["rule"] in TARGET_RULES), j
    # the rules this model classifies are exactly the workflow's rules
    known = (DP_RULES | RELEASED_RULES | EVALUATION_RULES | PRIVATE_PREP_RULES | TARGET_RULES
             | PUBLIC_RULES | NONPRIVATE_REFERENCE_RULES | SECRET_RULES)
    if not dag.baselines:
        known = known - {"fit_baseline", "fit_public_pool_lora", "fit_nonprivate", "generate_public",
                         "private_evolution"}
    assert {rule_of(lbl) for lbl in dag.labels} == known, "a new rule must be classified here"


def test_private_sources_are_found(dag):
    assert "embed[pool=private]" in dag.sources
    expected = {"embed", "private_set_features"} | ({"fit_baseline", "fit_nonprivate"} if dag.baselines else set())
    assert {rule_of(s) for s in dag.sources} == expected
    assert dag.of_rule(*DP_RULES) and dag.of_rule(*RELEASED_RULES)


def test_released_artifacts_depend_on_private_data_only_through_dp(dag):
    violations = check_private_flow(dag.edges, dag.sources, DP_RULES, RELEASED_KINDS, rule_of=dp_kind)
    # the only private-derived "released" jobs are the declared non-private reference cells
    leaked = {p[-1] for p in violations}
    assert all(_is_reference(job) for job in leaked), sorted(leaked)
    assert all(any(dp_kind(x).endswith("(non-private reference)") for x in p) for p in violations)
    # every finite-epsilon adapter and sample is clean
    finite = [j for j in dag.of_rule(*RELEASED_RULES) if not _is_reference(j)]
    assert finite and not leaked & set(finite)
    # ... and they do depend on it, through the release (the check is not vacuous)
    for job in dag.of_rule("generate_lora"):
        anc = dag.ancestors(job)
        assert any(rule_of(a) in DP_RULES for a in anc) and "embed[pool=private]" in anc


def test_nonprivate_reference_cells_are_exactly_the_exception(dag):
    violations = check_private_flow(dag.edges, dag.sources, DP_RULES, RELEASED_KINDS, rule_of=dp_kind)
    reference = {j for j in dag.of_rule(*RELEASED_RULES) if _is_reference(j)}
    assert {p[-1] for p in violations} == reference
    # the reference cells are exactly the reference rules' jobs, and the DP grid jobs (one per
    # method / set / seed) carry no eps=inf cell
    assert {rule_of(j) for j in reference} == {"generate_lora_reference", "sample_reference"}
    assert not any("epsinf" in f for j in dag.jobs if j["rule"] in ("sample", "generate_lora",
                                                                      "release_embedding", "fit_baseline")
                   for f in j["output"])
    # the default config does have the reference (privacy.nonprivate_reference: true), so this
    # test exercises the exception; its paths all run through an epsilon = inf release or the
    # nonprivate fit
    assert reference and all(any(_is_reference(x) and rule_of(x) in DP_RULES | NONPRIVATE_REFERENCE_RULES
                                 for x in p) for p in violations)


def test_private_data_reaches_only_private_prep_and_evaluation(dag):
    tainted = {t for t in dag.tainted() if not _is_reference(t)}
    assert {rule_of(t) for t in tainted} <= PRIVATE_PREP_RULES | EVALUATION_RULES | TARGET_RULES
    for t in tainted:
        if rule_of(t) in PRIVATE_PREP_RULES:
            assert "pool=private" in t, t
    # the public side of the pipeline (base model, embedder, LoRAs, hypernetwork) is untouched
    assert not {rule_of(t) for t in tainted} & PUBLIC_RULES


def test_baseline_fits_are_dp_except_the_nonprivate_reference(dag):
    fits = dag.of_rule("fit_baseline")
    nonprivate = dag.of_rule("fit_nonprivate")
    if not dag.baselines:
        assert not fits and not nonprivate
        return
    methods = {"dpsgd", "public_ft_dpsgd", "pda_dpmd"}
    assert {re.search(r"method=(\w+)", f).group(1) for f in fits} == methods
    for f in fits:
        assert f in dag.sources  # reads the private set itself: it must be the DP step
        assert not _is_reference(f), f
    # the nonprivate fits read the private set and are exactly the eps=inf references
    assert nonprivate and all(f in dag.sources and _is_reference(f) for f in nonprivate)
    # the public LoRA they start from reads no private data
    [pub] = dag.of_rule("fit_public_pool_lora")
    assert not dag.ancestors(pub) & dag.sources and pub not in dag.sources
    # DP-SGD samples (finite epsilon) are clean; nonprivate samples are reference cells
    violations = check_private_flow(dag.edges, dag.sources, DP_RULES, RELEASED_KINDS, rule_of=dp_kind)
    leaked = {p[-1] for p in violations}
    dp_samples = [j for j in dag.of_rule("sample")
                  if re.search(r"method=(" + "|".join(M.names(privacy="dp_sgd")) + "),", j)]
    assert dp_samples and not leaked & set(dp_samples)
    assert {j for j in leaked if "method=nonprivate" in j} == set(
        j for j in dag.of_rule("sample_reference") if "method=nonprivate" in j) != set()
    # the released sample figure never shows the nonprivate reference
    [fig] = [j for j in dag.jobs if job_label(j) == "sample_figure"]
    assert not any("/nonprivate/" in f for f in fig["input"])


def test_nothing_released_depends_on_evaluation(dag):
    for job in dag.of_rule(*RELEASED_RULES, *DP_RULES):
        bad = {a for a in dag.ancestors(job) if rule_of(a) in EVALUATION_RULES}
        assert not bad, (job, bad)


def test_every_dp_job_is_accounted_in_the_ledger(dag):
    ledger = str(dag.results / LEDGER_FILE)
    [accountant] = [job_label(j) for j in dag.jobs if ledger in j["output"]]
    for job in dag.of_rule(*DP_RULES):
        assert (job, accountant) in dag.edges, f"{job} is missing from {LEDGER_FILE}"


def test_the_secret_key_reaches_dp_rules_only(dag):
    key = [j for j in dag.jobs if j["rule"] == "noise_key"]
    assert len(key) == 1
    readers = {rule_of(b) for a, b in dag.edges if a == job_label(key[0])}
    assert readers and readers <= DP_RULES | {"release_reference"}, readers


def test_evaluation_rules_are_marked_evaluation_only():
    text = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    for rule in ("private_set_features", "score"):
        m = re.search(rf'^rule {rule}:\n\s+"""(.*?)"""', text, re.MULTILINE | re.DOTALL)
        assert m and m.group(1).startswith("EVALUATION ONLY"), rule
    m = re.search(r'^rule release_embedding:\n\s+"""(.*?)"""', text, re.MULTILINE | re.DOTALL)
    assert m and "DP" in m.group(1)


# ---------------------------------------------------------------------------------------
# the checks can fail
# ---------------------------------------------------------------------------------------
def test_checker_flags_a_synthetic_private_edge(dag):
    gen = dag.of_rule("generate_lora")[0]
    bad_edges = set(dag.edges) | {("embed[pool=private]", gen)}
    violations = check_private_flow(bad_edges, dag.sources, DP_RULES, RELEASED_RULES)
    assert ["embed[pool=private]", gen] in violations
    # the samples made from that adapter are flagged too
    assert any(p[0] == "embed[pool=private]" and rule_of(p[-1]) == "sample" for p in violations)


def test_checker_flags_a_missing_dp_step(dag):
    # without the release on the allow-list, the release itself is a leak
    violations = check_private_flow(dag.edges, dag.sources, frozenset(), RELEASED_RULES)
    # (the nonprivate fits' paths are violations with or without the allow-list)
    assert violations and all(any(rule_of(x) in DP_RULES | NONPRIVATE_REFERENCE_RULES for x in p)
                              for p in violations)
    through = {rule_of(x) for p in violations for x in p} & DP_RULES
    assert through == (DP_RULES if dag.baselines else {"release_embedding"})


def test_checker_flags_evaluation_feeding_a_release(dag):
    ref, smp = dag.of_rule("private_set_features")[0], dag.of_rule("sample")[0]
    edges = set(dag.edges) | {(ref, smp)}
    assert [ref, smp] in check_private_flow(edges, dag.sources, DP_RULES, RELEASED_RULES)


def test_checker_flags_a_workflow_that_feeds_private_embeddings_to_generate_lora(tmp_path):
    def leak(wf):
        rules = wf / "workflow" / "rules" / "generate.smk"
        text = rules.read_text()
        anchor = '        releases=per_epsilon(f"{R}/release/{{pset}}/eps{{eps}}_seed{{seed}}.json"),\n'
        assert anchor in text
        rules.write_text(text.replace(anchor, anchor + '        leak=f"{R}/embeddings/private.npy",\n'))

    bad = _build_dag(tmp_path, edit=leak)
    violations = check_private_flow(bad.edges, bad.sources, DP_RULES, RELEASED_RULES)
    gens = set(bad.of_rule("generate_lora"))
    assert gens and {p[-1] for p in violations} >= gens
    assert all(p[0] == "embed[pool=private]" for p in violations)
    assert ["embed[pool=private]", bad.of_rule("generate_lora")[0]] in violations
