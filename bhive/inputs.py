"""Input ntuples: resolving file lists, assigning processes, and checking files before use.

Every check here runs before any event is processed, so a bad input is one early error that
names the file, tree or branch and says how to fix it, instead of a traceback from deep
inside a chunk of a half-written dataset.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from bhive.store import stable_hash

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """An input file list, file, tree or branch that cannot be used as configured."""


def is_remote(path: str) -> bool:
    return "://" in path


def resolve_files(patterns: Iterable[str], what: str) -> list[str]:
    """Expand local globs (sorted) and keep remote URLs as given; duplicates are dropped.

    ``what`` names the list in errors, e.g. ``"samples.train of configs/x.yml"``.
    """
    files: list[str] = []
    for pattern in patterns:
        if is_remote(pattern):
            files.append(pattern)
            continue
        expanded = os.path.expandvars(os.path.expanduser(pattern))
        if glob.has_magic(expanded):
            matches = sorted(glob.glob(expanded))
            if not matches:
                raise InputError(f"{what}: the pattern '{pattern}' matches no file; check the path")
            files.extend(str(Path(m).resolve()) for m in matches)
        elif not Path(expanded).is_file():
            raise InputError(f"{what}: input file '{pattern}' does not exist; fix the path or remove it")
        else:
            files.append(str(Path(expanded).resolve()))
    unique = list(dict.fromkeys(files))
    if not unique:
        raise InputError(f"{what}: the file list is empty")
    return unique


def assign_processes(files: Sequence[str], processes: Sequence, overlap: str = "error") -> dict[str, int]:
    """The index of the configured process each file belongs to (first matching pattern wins).

    A file matching several processes, or none, is an error; with ``overlap: warn`` it is a
    logged warning and the file gets the first match, or -1 when nothing matches.
    """
    assignment = {}
    problems = []
    for path in files:
        matches = [i for i, p in enumerate(processes) if any(fnmatch.fnmatch(path, m) for m in p.match)]
        if len(matches) > 1:
            names = ", ".join(processes[i].name for i in matches)
            problems.append(f"'{path}' matches several processes ({names})")
        elif not matches:
            problems.append(f"'{path}' matches no process")
        assignment[path] = matches[0] if matches else -1
    if problems:
        message = ("input files are not assigned to exactly one process: " + "; ".join(problems)
                   + ". Fix the `match` patterns of `processes` in the config")
        if overlap == "error":
            raise InputError(message + " (or set `process_overlap: warn` to only warn)")
        logger.warning(message)
    return assignment


def file_list_hash(files: Sequence[str]) -> str:
    """Identity of an input file list: the paths, plus size and modification time of local files."""
    described = []
    for path in files:
        if is_remote(path):
            described.append([path])
        else:
            stat = os.stat(path)
            described.append([path, stat.st_size, stat.st_mtime_ns])
    return stable_hash(described)


def check_file(path: str, treename: str, branches: set[str], truth_branches: set[str]) -> int:
    """Open one file and check its tree and branches; returns the number of entries."""
    import uproot

    try:
        handle = uproot.open(path)
    except FileNotFoundError as error:
        raise InputError(f"input file '{path}' does not exist ({error})") from error
    except Exception as error:  # uproot raises many types for damaged files
        raise InputError(f"input file '{path}' is not a readable ROOT file (truncated or corrupt?): "
                         f"{type(error).__name__}: {error}. Re-create or re-copy it, or remove it from "
                         f"the file list") from error
    with handle:
        try:
            tree = handle[treename]
            keys = set(tree.keys())
        except Exception as error:
            trees = sorted(k.split(";")[0] for k, v in handle.classnames(recursive=True).items()
                           if v in ("TTree", "TNtuple", "ROOT::RNTuple", "ROOT::Experimental::RNTuple"))
            raise InputError(f"input file '{path}' has no tree '{treename}'; trees in the file: "
                             f"{', '.join(trees) or 'none'}. Set `treename` in the config") from error
        missing_truth = sorted(truth_branches - keys)
        if missing_truth:
            raise InputError(f"input file '{path}', tree '{treename}': truth branch(es) "
                             f"{', '.join(missing_truth)} missing; fix `truths` in the config")
        missing = sorted(branches - keys)
        if missing:
            raise InputError(f"input file '{path}', tree '{treename}': branch(es) {', '.join(missing)} "
                             f"missing; remove them from the config's features or use other ntuples")
        try:
            entries = tree.num_entries
        except Exception as error:
            raise InputError(f"input file '{path}': tree '{treename}' cannot be read ({error})") from error
    return entries
