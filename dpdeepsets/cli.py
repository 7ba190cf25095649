"""Shared command-line plumbing of the thin stage scripts in ``workflow/scripts``.

Each script reads the config sections it needs either as JSON (``--settings``, what
Snakemake passes, so that a changed section reruns exactly the stages that read it) or
from a YAML file (``--configfile``, for running a stage by hand; defaults from the schema).
Known errors end the process with one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback

from .config import ConfigError, load_config


def make_parser(description: str, sections: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--settings", help=f"JSON object with the config sections {sections} "
                                      "(what Snakemake passes)")
    p.add_argument("--configfile", nargs="+",
                   help="YAML config files to read those sections from instead, merged in order "
                        "as `snakemake --configfile` merges them (missing keys take the schema "
                        "defaults; start with config/config.yaml to get what the workflow reads)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    return p


def read_settings(args: argparse.Namespace, sections: list[str]) -> dict:
    if args.settings:
        data = json.loads(args.settings)
    else:
        data = load_config(args.configfile)  # None, or a list of files
    missing = [s for s in sections if s not in data]
    if missing:
        raise ConfigError(f"--settings lacks config sections {missing}")
    return {s: data[s] for s in sections}


def run(main) -> None:
    """Run ``main()``; expected failures become a one-line message and exit code 2.

    Every error class of the library (DataError, PrivacyError, LoRAError, SubsetError,
    ConfigError) derives from ValueError, so importing them (and torch) is not needed here.
    """
    from .access import record
    from .io import exit_cleanly_on_sigterm

    record()  # what this job really opens, beside its log (dpdeepsets.access)
    exit_cleanly_on_sigterm()  # a terminated job unwinds: no half artifact, no temp file
    expected = (ValueError, FileNotFoundError)
    try:
        main()
    except expected as exc:
        print(f"error: {exc}", file=sys.stderr)
        if os.environ.get("DPDEEPSETS_TRACEBACK"):
            traceback.print_exc()
        sys.exit(2)
