#!/usr/bin/env python
"""Peak memory and wall time of the stages that see the whole public pool, at the paper's N.

    python benchmarks/scale.py [--n 1281167] [--private 10000] [--workdir DIR] [--keep]
        [--log benchmarks/results/scale.log]

A public pool of ``--n`` images of 32x32x3 uint8 (ImageNet32's size: 1,281,167 images,
3.9 GB) and a private pool of ``--private`` images (CIFAR-10 test's size) are generated as
seeded structured noise (smooth class templates plus per-image noise; 10 labels), written
chunk by chunk through the project's own writer (``dpdeepsets.data.save_split``) as
uncompressed .npz, like docs/paper.md's conversion of ImageNet32. Then the real stage
scripts run on them, each in its own process, with config/paper.yaml's sections (the
embedder's backend switched to ``pixels``: no open_clip weights here):

prepare_data          split the sources into public / validation / private pools
fit_embedder          the projection on ``embedder.fit_max_images`` public images (PCA-64)
embed                 every public image -> float32 [N, 64]
build_subsets         the ``subsets.num_public`` k-NN subsets of ``subsets.set_size`` (4,096 of 128)
fit_digit_classifier  the classifier's fit on its subsample, then labelling the validation pool

For each stage: wall seconds, peak RSS (``os.wait4`` of the stage's process; RSS counts
the resident pages of memory-mapped files too, as a scheduler that polices RSS does),
the ``mem_mb`` of the rule's resource class in config/paper.yaml (the class a rule uses is
read from ``workflow/rules/*.smk``) and OK / OVER. The work directory (about 2.2 x the pool
on disk at the peak) is deleted at the end unless ``--keep``; with ``--keep`` a later run
on the same ``--workdir`` reuses the generated pools.

Wall times are of this 2-core machine and grow with its load (the load average at the start
and end is logged); the memory figures do not depend on it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dpdeepsets.config import merge_configs, validate_config  # noqa: E402

from _header import log_header, write_log  # noqa: E402  benchmarks/_header.py: command, commit, date; atomic log

IMAGE_SHAPE = (32, 32, 3)
CLASSES = 10
TEMPLATES = 100  # 10 per label: clusters for the k-NN sets to find
GEN_CHUNK = 8192


class Tee:
    def __init__(self):
        self.lines = []

    def __call__(self, line=""):
        print(line, flush=True)
        self.lines.append(line)


# --------------------------------------------------------------------------- the pools
def generate_pool(path: Path, n: int, seed: int) -> None:
    """``n`` labelled images of seeded structured noise -> uncompressed .npz at ``path``.

    Each image is one of 100 smooth templates (4x4x3 random colours upsampled to 32x32;
    label = template // 10) plus uniform noise in [-32, 32). The images are appended chunk
    by chunk to an .npy beside ``path`` (plain writes: nothing stays resident), which
    save_split streams from a memory map into the .npz; the .npy is then removed.
    """
    from dpdeepsets.data import save_split
    from dpdeepsets.data.store import _drop_pages

    rng = np.random.default_rng(seed)
    h, w, c = IMAGE_SHAPE
    coarse = rng.integers(40, 216, (TEMPLATES, 4, 4, c)).astype(np.int16)
    templates = coarse.repeat(h // 4, axis=1).repeat(w // 4, axis=2)
    which = rng.integers(0, TEMPLATES, n)
    build = path.with_name(path.name + ".build.npy")
    with open(build, "wb") as fh:
        np.lib.format.write_array_header_1_0(
            fh, {"descr": "|u1", "fortran_order": False, "shape": (n, h, w, c)})
        for lo in range(0, n, GEN_CHUNK):
            hi = min(n, lo + GEN_CHUNK)
            noise = rng.integers(0, 64, (hi - lo, h, w, c), dtype=np.uint8).astype(np.int16) - 32
            fh.write(np.clip(templates[which[lo:hi]] + noise, 0, 255).astype(np.uint8).tobytes())
    images = np.load(build, mmap_mode="r")
    save_split(str(path), images, which // (TEMPLATES // CLASSES))
    _drop_pages(images)
    del images
    build.unlink()


def pool_rows(path: Path) -> int | None:
    from dpdeepsets.data import load_split

    try:
        return len(load_split(str(path), mmap=True)[0])
    except (ValueError, OSError):
        return None


# --------------------------------------------------------------------------- config
def resource_classes() -> dict[str, str]:
    """rule name -> its resource class, from ``stage_resources("...")`` in workflow/rules/*.smk."""
    classes = {}
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        blocks = re.split(r"^rule (\w+):", smk.read_text(), flags=re.M)
        for name, body in zip(blocks[1::2], blocks[2::2]):
            m = re.search(r'stage_resources\("(\w+)"\)', body)
            if m:
                classes[name] = m.group(1)
    return classes


def paper_config(public: Path, private: Path, results: Path) -> dict:
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "paper.yaml").read_text())
    merge_configs(cfg, {"results_dir": str(results),
                        "base": {"pretrained_dir": None},
                        "embedder": {"backend": "pixels", "clip_weights": None}})
    cfg["data"]["source"] = {"kind": "npz", "path": str(private)}
    cfg["data"]["public_source"] = {"kind": "npz", "path": str(public)}
    return validate_config(cfg)


# --------------------------------------------------------------------------- stages
def run_stage(args: list[str], log: Path) -> tuple[int, float, float]:
    """Run one stage process -> (exit status, wall seconds, peak RSS in MB of that process)."""
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(args, cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss / 1024  # KiB on Linux


def stages(cfg: dict, work: Path, threads: int) -> list[tuple[str, str, list[str]]]:
    """(what, rule, command) of each measured stage, in DAG order."""
    py, scripts = sys.executable, "workflow/scripts"
    d, e = work / "results" / "data", work / "results"

    def settings(*sections):
        return json.dumps({s: cfg[s] for s in sections}, sort_keys=True)

    return [
        ("split the pools", "prepare_data",
         [py, f"{scripts}/prepare_data.py", "--settings", settings("data"),
          "--out-public", str(d / "public.npz"), "--out-validation", str(d / "validation.npz"),
          "--out-private", str(d / "private.npz"), "--out-summary", str(d / "summary.json")]),
        (f"PCA-{cfg['embedder']['dim']} on {cfg['embedder']['fit_max_images']:,} images",
         "fit_embedder",
         [py, f"{scripts}/fit_embedder.py", "--settings", settings("embedder"),
          "--threads", str(threads), "--public", str(d / "public.npz"),
          "--out", str(e / "embedder" / "projection.npz")]),
        ("embed the public pool", "embed",
         [py, f"{scripts}/embed.py", "--settings", settings("embedder"), "--threads", str(threads),
          "--images", str(d / "public.npz"), "--projection", str(e / "embedder" / "projection.npz"),
          "--out", str(e / "embeddings" / "public.npy")]),
        (f"{cfg['subsets']['num_public']:,} k-NN sets of {cfg['subsets']['set_size']}",
         "build_subsets",
         [py, f"{scripts}/build_subsets.py", "--settings", settings("subsets"),
          "--embeddings", str(e / "embeddings" / "public.npy"), "--pool", "public",
          "--out", str(e / "subsets" / "public.npz")]),
        ("classifier fit + validation labels", "fit_digit_classifier",  # its default max_images
         [py, f"{scripts}/fit_digit_classifier.py", "--public", str(d / "public.npz"),
          "--validation", str(d / "validation.npz"), "--out", str(e / "eval" / "digit_classifier.npz")]),
    ]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_281_167, help="public pool size; default: %(default)s (ImageNet32)")
    p.add_argument("--private", type=int, default=10_000,
                   help="private pool size; default: %(default)s (CIFAR-10 test)")
    p.add_argument("--workdir", help="where the pools and artifacts go; default: a new directory under /tmp")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="--threads of the torch stages; default: %(default)s")
    p.add_argument("--log", default="benchmarks/results/scale.log", help="where the table goes; default: %(default)s")
    p.add_argument("--generate", nargs=3, metavar=("PATH", "N", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.generate:  # the generation step's own process
        generate_pool(Path(args.generate[0]), int(args.generate[1]), int(args.generate[2]))
        return 0

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="dpdeepsets-scale-", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    row_bytes = int(np.prod(IMAGE_SHAPE))
    pool_gb = args.n * row_bytes / 1e9
    need_gb = 2.2 * pool_gb + 1.0  # pool + its build file, then pool + public split (+ embeddings)
    free_gb = shutil.disk_usage(work).free / 1e9

    out = Tee()
    for line in log_header(__file__, argv):
        out(line)
    out(f"machine: {os.cpu_count()} cores, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
        f"load average at start {os.getloadavg()[0]:.1f}; work directory {work} ({free_gb:.0f} GB free)")
    ok = True
    try:
        if free_gb < need_gb:
            out(f"not enough disk: {need_gb:.1f} GB needed for a pool of {pool_gb:.1f} GB, {free_gb:.1f} GB free")
            return 2
        pools = work / "pools"
        pools.mkdir(exist_ok=True)
        public_src, private_src = pools / "public_source.npz", pools / "private_source.npz"
        for path, n, seed in ((public_src, args.n, 0), (private_src, args.private, 1)):
            if pool_rows(path) == n:
                out(f"reusing {path} ({n:,} images)")
                continue
            t0 = time.perf_counter()
            rc, wall, rss = run_stage([sys.executable, str(Path(__file__).resolve()), "--generate", str(path), str(n), str(seed)],
                                      work / f"generate_{path.stem}.log")
            if rc:
                out(f"generating {path} failed (exit {rc}): see {work / f'generate_{path.stem}.log'}")
                return 1
            out(f"generated {path}: {n:,} images {IMAGE_SHAPE} uint8, {path.stat().st_size / 1e9:.2f} GB, "
                f"{time.perf_counter() - t0:.0f} s, peak RSS {rss:.0f} MB")

        cfg = paper_config(public_src, private_src, work / "results")
        classes = resource_classes()
        e, s = cfg["embedder"], cfg["subsets"]
        out(f"config/paper.yaml sections; embedder.backend=pixels (F = {row_bytes}), dim={e['dim']}, "
            f"fit_max_images={e['fit_max_images']}; subsets {s['num_public']} x {s['set_size']}; "
            f"data.validation_size={cfg['data']['validation_size']}")
        out()
        header = (f"{'stage':<22} {'what':<34} {'wall s':>8} {'peak RSS MB':>12} "
                  f"{'class':<10} {'mem_mb':>7}  verdict")
        out(header)
        out("-" * len(header))
        logs = work / "logs"
        logs.mkdir(exist_ok=True)
        for what, rule, cmd in stages(cfg, work, args.threads):
            stage_log = logs / f"{rule}.log"
            rc, wall, rss = run_stage(cmd, stage_log)
            cls = classes.get(rule, "?")
            mem_mb = cfg["resources"].get(cls, {}).get("mem_mb")
            if rc:
                verdict = f"FAILED (exit {rc})"
            elif mem_mb is not None and rss > mem_mb:
                verdict = "OVER"
            else:
                verdict = "OK"
            if rss > 8000:
                verdict += " (> 8 GB)"
            ok &= verdict == "OK"
            out(f"{rule:<22} {what:<34} {wall:>8.1f} {rss:>12.0f} {cls:<10} {mem_mb or '-':>7}  {verdict}")
            if rc:
                tail = stage_log.read_text().splitlines()[-5:]
                out("    " + "\n    ".join(tail))
                break
        out()
        summary = work / "results" / "data" / "summary.json"
        if summary.exists():
            sizes = json.loads(summary.read_text())
            out(f"pools: public {sizes['public']:,}, validation {sizes['validation']:,}, "
                f"private {sizes['private']:,}")
        out(f"load average at end {os.getloadavg()[0]:.1f}; "
            f"{'every stage within its mem_mb' if ok else 'NOT every stage within its mem_mb'}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            out(f"kept {work}")
        log = write_log(args.log, out.lines)
        print(f"wrote {log}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
