"""Input ntuples: resolving file lists, assigning processes, and checking files before use.

Every check here runs before any event is processed, so a bad input is one early error that
names the file, tree or branch and says how to fix it, instead of a traceback from deep
inside a chunk of a half-written dataset. Only damage inside the baskets, which the cheap
check does not read, shows during processing; :func:`damaged_file_error` turns it into the
same one-line error.
"""

from __future__ import annotations

import ast
import fnmatch
import glob
import logging
import os
import traceback
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

from bhive.store import stable_hash

logger = logging.getLogger(__name__)


class InputError(ValueError):
    """An input file list, file, tree or branch that cannot be used as configured."""


NOT_ROOT = "not a ROOT file"
CORRUPT = "truncated or corrupt ROOT file"
ROOT_MAGIC = b"root"


class InputFileError(InputError):
    """A damaged input file: truncated, overwritten or not ROOT at all.

    ``problem`` is :data:`NOT_ROOT` or :data:`CORRUPT`; ``detail`` says where, when uproot
    tells (``expected N bytes at offset M``). The constructor's arguments are its ``args``,
    so the error survives pickling from a worker process.
    """

    def __init__(self, path: str, problem: str, detail: str = "") -> None:
        super().__init__(path, problem, detail)
        self.path, self.problem, self.detail = path, problem, detail

    def __str__(self) -> str:
        detail = f" ({self.detail})" if self.detail else ""
        return (f"{self.problem}: {self.path}{detail}. Replace or re-copy the file, or drop it from "
                f"`samples` in the config")


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


def check_file(path: str, treename: str, branches: set[str], truth_branches: set[str],
               reference_branches: set[str] = frozenset()) -> int:
    """Open one file and check its tree and branches; returns the number of entries.

    Only the header, the directories and the tree's metadata are read, never a basket (see
    :func:`tree_branches`).
    """
    tree = tree_branches(path, treename)
    check_branches(path, treename, tree.branches, branches, truth_branches, reference_branches)
    return tree.entries


class Tree(NamedTuple):
    """What opening one file's tree tells."""

    branches: set[str]
    entries: int
    file_uuid: bytes


def tree_branches(path: str, treename: str) -> Tree:
    """The branch names and the number of entries of the tree ``treename`` in one file, and
    the file's UUID.

    Only the header, the directories and the tree's metadata are read, never a basket, so the
    check stays cheap for large remote files. Damage inside the baskets shows only when they
    are read during processing, where :func:`damaged_file_error` gives the same message.
    """
    import uproot

    from bhive import class_names

    class_names.cache_class_names()
    if not is_remote(path):
        _check_magic(path)
    try:
        file = uproot.reading.ReadOnlyFile(path)  # reads the header only
    except FileNotFoundError as error:
        raise InputError(f"input file '{path}' does not exist ({error})") from error
    except Exception as error:
        raise _unreadable(path, error) from error
    with file:
        _check_size(file, path)
        tree = _find_tree(file, path, treename)
        try:
            return Tree(set(tree.keys()), tree.num_entries, file.fUUID)
        except Exception as error:
            raise _unreadable(path, error) from error


def check_branches(path: str, treename: str, available: set[str], branches: set[str], truth_branches: set[str],
                   reference_branches: set[str] = frozenset()) -> None:
    """Refuse a file whose tree (with branches ``available``) lacks a branch the config reads.

    Truth and reference-tagger branches are named apart, each with the config key to fix.
    """
    where = f"input file '{path}', tree '{treename}'"
    missing = set(branches | truth_branches) - set(available)
    for kind, names, fix in (
            ("truth branch(es)", missing & truth_branches, "fix `truths` in the config"),
            ("reference tagger branch(es)", missing & reference_branches - truth_branches,
             "fix `reference_taggers` in the config: list only taggers these ntuples store"),
            ("branch(es)", missing - truth_branches - reference_branches,
             ("the config reads them (features, regression targets, event weight) or the processor needs them "
              "to read branches the config names (an index or matching branch); remove what needs them from the "
              "config or use ntuples that have them"))):
        if names:
            raise InputError(f"{where}: {kind} {', '.join(sorted(names))} missing; {fix}")


_TREE_CLASSES = ("TTree", "TNtuple", "ROOT::RNTuple", "ROOT::Experimental::RNTuple")


def _find_tree(file, path: str, treename: str):
    """The tree object; a name that is not in the file lists the trees that are."""
    import uproot

    try:
        directory = file.root_directory
        tree = directory[treename]
    except uproot.KeyInFileError as error:
        # the directory listing was readable, so the name is really not there
        raise InputError(f"input file '{path}' has no tree '{treename}'; trees in the file: "
                         f"{', '.join(_tree_names(directory, path)) or 'none'}. Set `treename` in the config") \
            from error
    except Exception as error:
        # the tree is listed but its record cannot be read: damage, not a wrong name
        raise _unreadable(path, error) from error
    if getattr(tree, "classname", None) not in _TREE_CLASSES:
        raise InputError(f"input file '{path}': '{treename}' is a {getattr(tree, 'classname', type(tree).__name__)}, "
                         f"not a tree; trees in the file: {', '.join(_tree_names(directory, path)) or 'none'}. "
                         f"Set `treename` in the config")
    return tree


def _tree_names(directory, path: str) -> list[str]:
    try:
        classnames = directory.classnames(recursive=True)
    except Exception as error:
        raise _unreadable(path, error) from error
    return sorted(k.split(";")[0] for k, v in classnames.items() if v in _TREE_CLASSES)


def _check_magic(path: str) -> None:
    # uproot needs a whole header before it looks at the magic bytes, so a short text file
    # would otherwise read as a truncated ROOT file
    with open(path, "rb") as stream:
        start = stream.read(len(ROOT_MAGIC))
    if not start:
        raise InputFileError(path, NOT_ROOT, "the file is empty")
    if not ROOT_MAGIC.startswith(start):
        raise InputFileError(path, NOT_ROOT, f"it starts with {start!r}, not {ROOT_MAGIC!r}")


def _check_size(file, path: str) -> None:
    """A file shorter than its header says is truncated, whatever part of it is read later."""
    try:
        size = file.source.num_bytes
    except Exception:  # noqa: BLE001 - a server that does not tell the size: reading the baskets will
        return
    if size is not None and file.fEND > size:
        raise InputFileError(path, CORRUPT, f"expected {file.fEND - size} bytes at offset {size}: the header "
                                            f"records {file.fEND} bytes, the file has {size}")


def _unreadable(path: str, error: BaseException) -> InputError:
    damaged = damaged_file_error(path, error)
    if damaged is not None:
        return damaged
    if is_remote(path):  # a server or network problem looks no different
        return InputError(f"input file '{path}' cannot be read ({_reason(error)}); if the server is fine, "
                          f"replace or re-copy the file, or drop it from `samples` in the config")
    # a local file whose size matches its header: any failure to read its structure is damage
    return InputFileError(path, CORRUPT, _reason(error))


#: uproot modules that raise when the bytes read are not what the file's structure promises:
#: a read past the end of the file, a block that does not decompress, an object that does
#: not deserialize
_DAMAGE_MODULES = ("uproot.source.chunk", "uproot.source.cursor", "uproot.compression", "uproot.deserialization")


def damaged_file_error(path: str, error: BaseException) -> InputFileError | None:
    """``error`` as an :class:`InputFileError` for ``path`` when uproot raised it, or raised
    what it wraps, because the file is damaged or not ROOT; None for any other error (a bug,
    a network problem).
    """
    for cause in _chain(error):
        damaged = cause if isinstance(cause, InputFileError) else _uproot_damage(path, cause)
        if damaged is not None:
            return damaged
    return None


def _uproot_damage(path: str, error: BaseException) -> InputFileError | None:
    # uproot raises plain OSError/ValueError/zlib.error or a DeserializationError and keeps
    # the position only in its own frames, so that is where the position is taken from
    import uproot

    frames = [frame for frame, _ in traceback.walk_tb(error.__traceback__)]
    innermost = frames[-1] if frames else None
    module = innermost.f_globals.get("__name__", "") if innermost else ""
    if module == "uproot.reading" and str(error).startswith(NOT_ROOT):
        return InputFileError(path, NOT_ROOT, _first_line(str(error)).removeprefix(NOT_ROOT + ": "))
    if not (isinstance(error, uproot.deserialization.DeserializationError) or module in _DAMAGE_MODULES):
        return None
    span, what = _damaged_span(reversed(frames))
    short_read = isinstance(error, OSError) and module == "uproot.source.chunk"
    reason = "the file ends before" if short_read else _reason(error)
    if span is None:
        return InputFileError(path, CORRUPT, reason)
    size, offset = span
    return InputFileError(path, CORRUPT, f"expected {size} bytes at offset {offset}"
                                         f"{f' for {what}' if what else ''}: {reason}")


def _damaged_span(frames) -> tuple[tuple[int, int] | None, str]:
    """(size, offset) of the bytes uproot was reading, innermost frame first, and what they hold."""
    import uproot

    span, what = None, ""
    for frame in frames:
        local, name = frame.f_locals, frame.f_code.co_name
        owner = local.get("self")
        if isinstance(owner, uproot.source.chunk.Chunk) and name == "wait":
            # a short read: ``insist`` is how far the data were needed, True for all of it
            insist = local.get("insist")
            stop = insist if isinstance(insist, int) and not isinstance(insist, bool) else owner.stop
            span = span or (stop - owner.start, owner.start)
        elif name == "chunk_to_basket" and isinstance(local.get("chunk"), uproot.source.chunk.Chunk):
            chunk, branch = local["chunk"], local.get("branch")
            span = span or (chunk.stop - chunk.start, chunk.start)
            what = f"basket {local.get('basket_num')} of branch '{getattr(branch, 'name', '?')}'"
        elif isinstance(owner, uproot.reading.ReadOnlyKey):
            span = span or (owner.fNbytes, owner.fSeekKey)
            what = f"the {owner.fClassName} '{owner.fName}'"
        if span and what:
            break
    return span, what


def _reason(error: BaseException) -> str:
    import uproot

    kind = type(error)
    name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    # a DeserializationError's str() dumps every member read so far; its message is the point
    message = error.message if isinstance(error, uproot.deserialization.DeserializationError) else str(error)
    return f"{name}: {_first_line(message)}"


def _first_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[0].rstrip(",") if lines else ""


def _chain(error: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def input_error_in(error: BaseException) -> InputError | None:
    """The :class:`InputError` that ``error`` wraps, if any.

    coffea wraps a processor's errors in a plain ``Exception`` whose message holds the
    error's ``repr``; from a worker process only that message arrives (pickling drops the
    cause), so an :class:`InputFileError` is rebuilt from it.
    """
    for cause in _chain(error):
        if isinstance(cause, InputError):
            return cause
    for cause in _chain(error):
        rebuilt = _input_file_error_from_repr(str(cause))
        if rebuilt is not None:
            return rebuilt
    return None


def _input_file_error_from_repr(message: str) -> InputFileError | None:
    prefix = InputFileError.__name__
    start = message.find(prefix + "(")
    if start < 0:
        return None
    start += len(prefix)
    # the arguments are string literals, which may hold ")": try each ")" as the closing one
    for end in (i for i in range(start, len(message)) if message[i] == ")"):
        try:
            args = ast.literal_eval(message[start:end + 1])
        except (ValueError, SyntaxError):
            continue
        if isinstance(args, tuple) and len(args) == 3 and all(isinstance(a, str) for a in args):
            return InputFileError(*args)
        return None
    return None
