"""The SLURM profile on a real single-node SLURM cluster started by this test.

Enabled by DPDEEPSETS_TEST_SLURM=1 (.ci/run sets it); otherwise skipped with the reason.
When enabled it needs root (slurmd launches jobs as their user) and the Debian packages
slurmctld, slurmd, slurm-client and munge; missing packages are installed with apt-get.
If SLURM cannot be brought up the test FAILS, with the daemons' logs.

The cluster lives in a temporary directory: its own munge key and socket, slurm.conf on free
ports, no systemd, ProctrackType=proctrack/linuxproc, TaskPlugin=task/none, no accounting
daemon. The node advertises two GPUs (GRES backed by /dev/null and /dev/zero) so that the
jobs that ask for `gpu` get --gpus placed by the scheduler as on a cluster; they run on the
CPU (no CUDA device exists). Without slurmdbd, sacct never reports a job, so the run uses
`--slurm-status-command squeue` with MinJobAge far above the 120 s the executor needs.

The tiny config runs through `snakemake --executor slurm --profile profiles/slurm`; the
scheduler's own job records (scontrol) must show one job per Snakemake job with the
configured resources, and the artifacts must equal those of the local run of the same config.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENABLED = os.environ.get("DPDEEPSETS_TEST_SLURM") == "1"
PACKAGES = ["slurmctld", "slurmd", "slurm-client", "munge"]
ETC_SLURM = Path("/etc/slurm")
CONF_FILES = ("slurm.conf", "gres.conf", "cgroup.conf")
BINARIES = ["munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not ENABLED, reason="set DPDEEPSETS_TEST_SLURM=1 to run the pipeline on a "
                       "real single-node SLURM started by the test (needs root; installs "
                       f"{' '.join(PACKAGES)} with apt-get when missing)"),
]

# Resources per stage class for this run: distinct values, so that each job's record in the
# scheduler shows which class it came from; small enough for any test machine.
RESOURCES = {
    "light": {"gpu": 0, "mem_mb": 300, "runtime": 11},
    "encoder": {"gpu": 0, "mem_mb": 400, "runtime": 12},
    "cpu_train": {"gpu": 0, "mem_mb": 500, "runtime": 13},
    "gpu_train": {"gpu": 1, "mem_mb": 600, "runtime": 14},
    "sampling": {"gpu": 1, "mem_mb": 700, "runtime": 15},
}


def _ensure_packages():
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if not missing:
        return
    if shutil.which("apt-get") is None:
        pytest.fail(f"SLURM binaries {missing} are missing and apt-get is not available: "
                    f"install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES]
    proc = subprocess.run(install, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update"], capture_output=True, text=True, env=env)
        proc = subprocess.run(install, capture_output=True, text=True, env=env)
    still = [b for b in BINARIES if shutil.which(b) is None]
    if proc.returncode != 0 or still:
        pytest.fail(f"could not install {' '.join(PACKAGES)} (missing {still}): "
                    f"{proc.stdout[-1500:]}{proc.stderr[-1500:]}")


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _mem_total_mb():
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 4096


def _stale_link(link: Path):
    """A link left behind by a killed run of this test: its cluster is gone."""
    conf_dir = link.readlink().parent
    if not (conf_dir / "slurm.conf").exists():
        return True
    if "ClusterName=dpdtest" not in (conf_dir / "slurm.conf").read_text():
        return False
    try:
        os.kill(int((conf_dir / "slurmctld.pid").read_text()), 0)
    except (OSError, ValueError):
        return True
    return False  # another run of this test is using it


class Cluster:
    """munged + slurmctld + slurmd for one node, configured and logged under `root`."""

    def __init__(self, root: Path):
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.logs = root / "log"
        self.pidfiles = {name: root / f"{name}.pid" for name in ("slurmd", "slurmctld", "munged")}
        self.links = []

    def write_config(self):
        r = self.root
        for d in ("log", "state", "spool", "munge", "munge-key"):
            (r / d).mkdir(parents=True, exist_ok=True)
        (r / "munge").chmod(0o755)
        (r / "munge-key").chmod(0o700)
        key = r / "munge-key" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        ctld_port, d_port = _free_ports(2)
        cpus = os.cpu_count() or 1
        mem = max(1024, int(_mem_total_mb() * 0.8))
        self.conf.write_text(f"""\
ClusterName=dpdtest
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={r}/munge/munge.sock
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={self.pidfiles['slurmctld']}
SlurmdPidFile={self.pidfiles['slurmd']}
SlurmctldLogFile={self.logs}/slurmctld.log
SlurmdLogFile={self.logs}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.logs}/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MinJobAge=3600
ReturnToService=2
MpiDefault=none
SwitchType=switch/none
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        # Two character devices stand in for GPUs: the scheduler allocates them, CUDA sees none.
        (r / "gres.conf").write_text(f"NodeName={self.host} Name=gpu File=/dev/null\n"
                                     f"NodeName={self.host} Name=gpu File=/dev/zero\n")
        # slurmd loads a cgroup plugin even with proctrack/linuxproc; autodetect picks v1 or v2.
        (r / "cgroup.conf").write_text("CgroupPlugin=autodetect\nIgnoreSystemd=yes\n")
        # Inside a job, the executor's `srun` runs with every SLURM_* variable but the job's
        # identity removed (SLURM_CONF too), so like on a real cluster the configuration must
        # sit where the client looks by default. Links, removed again by stop().
        ETC_SLURM.mkdir(parents=True, exist_ok=True)
        for name in CONF_FILES:
            link = ETC_SLURM / name
            if link.is_symlink() and _stale_link(link):
                link.unlink()
            if link.exists() or link.is_symlink():
                self.fail(f"{link} exists (this machine's own SLURM configuration, or another "
                          f"run of this test): it is not overwritten")
            link.symlink_to(r / name)
            self.links.append(link)

    def _run(self, cmd, **kw):
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env, **kw)

    def start(self):
        r = self.root
        steps = [
            ["munged", "--force", f"--socket={r}/munge/munge.sock",
             f"--key-file={r}/munge-key/munge.key", f"--log-file={self.logs}/munged.log",
             f"--pid-file={self.pidfiles['munged']}", f"--seed-file={r}/munge-key/seed"],
            ["slurmctld", "-f", str(self.conf)],
            ["slurmd", "-f", str(self.conf), "-N", self.host],
        ]
        for cmd in steps:
            proc = self._run(cmd, timeout=60)
            if proc.returncode != 0:
                self.fail(f"{cmd[0]} did not start (exit {proc.returncode}): {proc.stderr.strip()}")
            time.sleep(1)
        deadline = time.time() + 90
        state = ""
        while time.time() < deadline:
            state = self._run(["sinfo", "-h", "-N", "-o", "%T"], timeout=30).stdout.strip()
            if state == "idle":
                return
            time.sleep(1)
        self.fail(f"the node did not become idle within 90 s (state {state!r})")

    def fail(self, msg):
        logs = ""
        for name in ("munged.log", "slurmctld.log", "slurmd.log"):
            f = self.logs / name
            if f.exists():
                logs += f"\n--- {name} (tail) ---\n" + "\n".join(f.read_text().splitlines()[-15:])
        self.stop()
        pytest.fail(f"SLURM could not be brought up: {msg}{logs}")

    def stop(self):
        if self.pidfiles["slurmctld"].exists():
            self._run(["scancel", "--user", str(os.getuid())], timeout=30)
        for name in ("slurmd", "slurmctld", "munged"):
            f = self.pidfiles[name]
            if not f.exists():
                continue
            try:
                pid = int(f.read_text().strip())
                os.kill(pid, signal.SIGTERM)
            except (ValueError, ProcessLookupError):
                continue
            for _ in range(50):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                os.kill(pid, signal.SIGKILL)
            f.unlink(missing_ok=True)
        for link in self.links:
            link.unlink(missing_ok=True)
        self.links = []

    def job_records(self):
        """scontrol's record of every job this cluster has seen (kept for MinJobAge)."""
        out = self._run(["scontrol", "show", "job", "--oneliner"], timeout=60).stdout
        records = []
        for line in out.splitlines():
            if not line.startswith("JobId="):
                continue
            rec = dict(re.findall(r"(\w[\w/:]*)=(\S*)", line))
            records.append(rec)
        return records

    def job_list(self):
        fmt = "JobID:6,State:11,TimeUsed:8,NumCPUs:5,MinMemory:8,tres-per-job:13,TimeLimit:11,Comment:90"
        return self._run(["squeue", "--states=all", "--sort=i", "-O", fmt], timeout=60).stdout


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    if os.geteuid() != 0:
        pytest.fail("DPDEEPSETS_TEST_SLURM=1 but not root: slurmd must run as root to launch jobs")
    _ensure_packages()
    cluster = Cluster(tmp_path_factory.mktemp("slurm"))
    cluster.write_config()
    cluster.start()
    yield cluster
    cluster.stop()


def _artifacts(results: Path):
    """Every artifact's path relative to results (logs, benchmarks, figures left out)."""
    skip = ("logs", "benchmarks")
    return sorted(f.relative_to(results).as_posix() for f in results.rglob("*")
                  if f.is_file() and f.relative_to(results).parts[0] not in skip
                  and f.suffix != ".png" and f.name != ".snakemake_timestamp")


def _equal(a, b):
    import torch

    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_equal, a, b))
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, float) and isinstance(b, float):
        # accountant numbers (PRV, an FFT-based method) agree to 1e-9, not bit for bit
        return a == b or abs(a - b) <= 1e-9 * max(abs(a), abs(b))
    if hasattr(a, "equals"):  # a table
        import pandas as pd

        try:
            pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9)
            return True
        except AssertionError:
            return False
    return a == b


def _content(path: Path, results: Path):
    """What an artifact holds, without what legitimately differs between two runs: the
    results directory's own path (ledger CSV), wall-clock seconds (JSON summaries: `seconds`, `*_seconds`), the
    order of peft's target_modules (a set), and the byte layout of torch/safetensors files."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            return {"metadata": f.metadata(), "tensors": {k: f.get_tensor(k) for k in f.keys()}}
    if path.suffix == ".pt":
        import torch

        return torch.load(path, map_location="cpu", weights_only=False)
    if path.suffix == ".json":
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            for key in [k for k in data if k == "seconds" or k.endswith("_seconds")]:
                data.pop(key)  # wall-clock: differs between any two runs
            if isinstance(data.get("target_modules"), list):
                data["target_modules"] = sorted(data["target_modules"])
        return data
    if path.suffix == ".csv":
        import io

        import pandas as pd

        return pd.read_csv(io.StringIO(path.read_text().replace(str(results), "<results>")))
    return path.read_bytes()


def test_tiny_config_through_slurm(slurm_cluster, tiny_run, tiny_key, tmp_path):
    results = tmp_path / "results"
    override = tmp_path / "resources.yaml"  # and the tests' noise key: the local run's noise
    override.write_text(json.dumps({"resources": RESOURCES, "privacy": {"key_file": str(tiny_key)}}))
    cmd = [sys.executable, "-m", "snakemake", "--executor", "slurm", "--profile", "profiles/slurm",
           "--configfile", "config/test.yaml", str(override), "--config", f"results_dir={results}",
           # Site settings of this test cluster (no slurmdbd, no accounts):
           "--slurm-status-command", "squeue", "--slurm-no-account",
           "--slurm-init-seconds-before-status-checks", "2",
           "--slurm-logdir", str(tmp_path / "slurm_logs"), "--slurm-keep-successful-logs"]
    start = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=slurm_cluster.env,
                          timeout=40 * 60)
    wall = time.time() - start
    job_list = slurm_cluster.job_list()
    print(f"snakemake --executor slurm: {wall:.0f} s\n{job_list}")
    assert proc.returncode == 0, proc.stderr[-5000:] + job_list

    # The scheduler's own records: one SLURM job per Snakemake job, all COMPLETED, each with
    # the resources of its stage class (gpu -> --gpus, mem_mb -> --mem, runtime -> --time).
    stats = proc.stderr[proc.stderr.index("Job stats"):]
    expected = {}
    for line in stats.splitlines()[3:]:
        if line.startswith("total"):
            break
        rule, count = line.split()
        expected[rule] = int(count)
    expected.pop("all")
    records = slurm_cluster.job_records()
    seen = {}
    for rec in records:
        rule = re.match(r"rule_(\w+?)(_wildcards_.*)?$", rec["Comment"]).group(1)
        seen[rule] = seen.get(rule, 0) + 1
        assert rec["JobState"] == "COMPLETED" and rec["ExitCode"] == "0:0", rec
        res = RESOURCES[_stage_class(rule)]
        assert rec["MinMemoryNode"] == f"{res['mem_mb']}M", rec
        assert rec["TimeLimit"] == f"00:{res['runtime']:02d}:00", rec
        assert ("gres:gpu:1" in rec.get("TresPerJob", "")) == (res["gpu"] == 1), rec
    assert seen == expected

    # The same artifacts as the local run of the same config, value for value (the tiny
    # config is deterministic across processes: FID/KID in metrics.csv agree exactly).
    assert _artifacts(results) == _artifacts(tiny_run)
    differ = [rel for rel in _artifacts(tiny_run)
              if not _equal(_content(tiny_run / rel, tiny_run), _content(results / rel, results))]
    assert not differ, differ


def _stage_class(rule):
    text = "".join(p.read_text() for p in (ROOT / "workflow/rules").glob("*.smk"))
    block = text[text.index(f"rule {rule}:"):]
    return re.search(r'stage_resources\("(\w+)"\)', block).group(1)
