"""One truth about resources: each rule's stage class (config `resources`) as Snakemake itself
parses it from workflow/rules/*.smk, the lists of rules per class in the schema and in
docs/slurm.md, and the SLURM profile's partition choice for every rule.

The class of each rule is read from the rule objects of the loaded workflow, not from the
text: the workflow is loaded with a config whose classes have distinct `mem_mb` values
(sentinels), so a rule's `mem_mb` says which class its `resources:` came from. A rule that
runs a job and does not ask for a class (or asks twice) fails here, and so does a GPU rule
that the SLURM partition file would not place on a GPU partition.
"""

import json
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["light", "encoder", "cpu_train", "gpu_train", "sampling"]
SENTINEL = {c: 90001 + i for i, c in enumerate(CLASSES)}  # mem_mb per class, distinct

# Loads the workflow (default config + the sentinels) through Snakemake's API and prints, per
# rule: whether it runs a job, its mem_mb and gpu resources and its threads.
PROBE = """
import json, sys
from pathlib import Path
from snakemake.api import SnakemakeApi
from snakemake.settings.types import (ConfigSettings, DeploymentSettings, OutputSettings,
                                      ResourceSettings, StorageSettings)
over = json.loads(sys.argv[1])
with SnakemakeApi(OutputSettings()) as api:
    wf = api.workflow(resource_settings=ResourceSettings(), storage_settings=StorageSettings(),
                      config_settings=ConfigSettings(configfiles=[Path("config/config.yaml")],
                                                     config=over),
                      deployment_settings=DeploymentSettings(), snakefile=Path("Snakefile"))
    rules = {}
    for r in wf._workflow.rules:
        res = {k: getattr(v, "raw", v) for k, v in r.resources.items()
               if k in ("mem_mb", "gpu", "runtime")}
        rules[r.name] = {"runs": not r.norun, "resources": res}
    print("PROBE" + json.dumps(rules))
"""


@pytest.fixture(scope="module")
def rules():
    over = {"resources": {c: {"mem_mb": SENTINEL[c]} for c in CLASSES}}
    proc = subprocess.run([sys.executable, "-c", PROBE, json.dumps(over)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout[proc.stdout.index("PROBE") + 5:])


@pytest.fixture(scope="module")
def classes(rules):
    """{class: set of rules}, from the loaded rule objects."""
    by_mem = {m: c for c, m in SENTINEL.items()}
    out = {c: set() for c in CLASSES}
    for name, rule in rules.items():
        if rule["runs"]:
            mem = rule["resources"].get("mem_mb")
            assert mem in by_mem, f"rule {name} runs a job but asks for no stage class " \
                                  f"(resources: **stage_resources(CLASS)); mem_mb={mem}"
            out[by_mem[mem]].add(name)
        else:  # a target rule (all, synthetic): no job, nothing to submit
            assert "mem_mb" not in rule["resources"], name
    return out


def test_every_rule_in_the_files_was_loaded(rules):
    """The probe's default config defines every rule the .smk files contain (rules inside an
    `if`, like noise_key, included), and each rule block asks for one class at most."""
    names = set()
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        text = smk.read_text()
        blocks = re.split(r"^\s*(?:rule|checkpoint) (\w+):", text, flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2]):
            names.add(name)
            assert len(re.findall(r"stage_resources\(", body)) <= 1, (smk.name, name)
    snakefile = (ROOT / "Snakefile").read_text()
    names |= set(re.findall(r"^rule (\w+):", snakefile, flags=re.M))
    assert names == set(rules), (names ^ set(rules))


def test_known_classes(classes):
    """The classes this issue settled (the hypernetwork's end-to-end phase runs through the
    UNet on the job's GPU, so train_hypernet is gpu_train)."""
    assert "train_hypernet" in classes["gpu_train"]
    assert "tune_baselines_proxy" in classes["gpu_train"]
    assert "private_evolution" in classes["sampling"]
    assert classes["cpu_train"] == {"synthetic_experiment"}


def _schema_lists():
    schema = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
    out = {}
    for c in CLASSES:
        desc = " ".join(schema["properties"]["resources"]["properties"][c]["description"].split())
        m = re.search(r"Rules: ([\w, ]+)\.$", desc)
        assert m, f"schema resources.{c}.description must end with 'Rules: a, b, c.': {desc!r}"
        out[c] = {r.strip() for r in m.group(1).split(",")}
    return out


def _doc_lists(path: Path):
    """The bullets ``- `class`: `rule`, `rule`, ...`` (possibly wrapped) of a markdown file."""
    out = {}
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"\s*- `(\w+)`:(.*)", line)
        if not m or m.group(1) not in CLASSES:
            continue
        text = m.group(2)
        for more in lines[i + 1:]:
            if not more.strip() or re.match(r"\s*-\s", more):
                break
            text += " " + more
        out[m.group(1)] = set(re.findall(r"`(\w+)`", text))
    return out


def test_schema_lists_name_exactly_the_rules_of_each_class(classes):
    assert _schema_lists() == classes


def test_docs_list_exactly_the_rules_of_each_class(classes):
    assert _doc_lists(ROOT / "docs/slurm.md") == classes
    readme = _doc_lists(ROOT / "config/README.md")  # it may point to docs/slurm.md instead
    assert readme == {c: classes[c] for c in readme}


def test_paper_config_gpu_classes():
    """config/paper.yaml runs the encoders, the UNet training and sampling on GPUs, and the
    light and cpu_train jobs without."""
    paper = yaml.safe_load((ROOT / "config/paper.yaml").read_text())["resources"]
    assert {c for c in CLASSES if paper[c]["gpu"] >= 1} == {"encoder", "gpu_train", "sampling"}


def _config_resources(path):
    from dpdeepsets.config import load_schema

    schema = load_schema()["properties"]["resources"]["properties"]
    given = yaml.safe_load((ROOT / path).read_text()).get("resources", {})
    return {c: {k: given.get(c, {}).get(k, spec["default"])
                for k, spec in schema[c]["properties"].items()} for c in CLASSES}


@pytest.mark.parametrize("config", ["config/paper.yaml", "config/config.yaml"])
def test_slurm_partition_file_places_every_gpu_rule_on_a_gpu_partition(classes, config):
    """The profile's partition file, through the SLURM executor's own choice
    (`get_best_partition`), sends every job of a class with gpu >= 1 to a partition with GPUs
    and every other job to one without. Threads: the config's largest count (the strictest
    fit against a partition's max_threads)."""
    from snakemake_executor_plugin_slurm.partitions import get_best_partition, read_partition_file

    profile = (ROOT / "profiles/slurm/config.yaml").read_text()
    assert re.search(r"^#? ?slurm-partition-config: partitions\.yaml$", profile, flags=re.M)
    assert not re.search(r"^\s*slurm_partition:", profile, flags=re.M)  # would override the choice
    partitions = read_partition_file(ROOT / "profiles/slurm/partitions.yaml")
    gpus = {p.name: p.limits.max_gpu for p in partitions}
    assert sorted(gpus.values())[0] == 0 and max(gpus.values()) >= 1
    cfg = yaml.safe_load((ROOT / config).read_text())
    threads = max(cfg.get(k, 1) for k in ("threads", "threads_heavy", "threads_base"))
    quiet = SimpleNamespace(info=lambda *a: None, debug=lambda *a: None, warning=lambda *a: None)
    resources = _config_resources(config)
    placed = {}
    for cls, members in classes.items():
        res = {k: v for k, v in resources[cls].items() if v is not None}
        for rule in members:
            job = SimpleNamespace(name=rule, threads=threads, resources=res)
            placed[rule] = get_best_partition(partitions, job, quiet)
            assert placed[rule] is not None, (rule, cls, res)
            assert (gpus[placed[rule]] >= 1) == (res["gpu"] >= 1), (rule, cls, res, placed[rule])
    gpu_rules = {r for c, m in classes.items() if resources[c]["gpu"] >= 1 for r in m}
    assert {r for r, p in placed.items() if gpus[p] >= 1} == gpu_rules
