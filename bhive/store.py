"""The output store: where task outputs live, and how they are written.

Outputs live under ``$BHIVE_STORE`` (default ``./store``) at
``<Task>/<config>/<versions...>/...``. Three rules keep a store that a working group shares
trustworthy:

- **names cannot leave the store**: every name that becomes a path part (config, versions,
  model) passes :func:`check_name`, and :func:`store_path` refuses anything that would
  resolve outside the store root;
- **nothing half-written looks finished**: files and directories are written under a
  temporary name private to one run and renamed into place (:func:`atomic_path`,
  :func:`atomic_write`, :func:`atomic_directory`); a failure, a full disk included, removes
  the temporary and names the store path;
- **concurrent runs of one task wait for each other**: :func:`output_lock` holds an advisory
  lock on the output directory while a run writes it.

What an output was made from (its identity) is the business of :mod:`bhive.identity`.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import bhive

logger = logging.getLogger(__name__)

LOCK_FILE = ".lock"
# letters, digits, '.', '_' and '-', not starting with '.': never '..', '/', a hidden file or an absolute path
_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")
_NAME_RULE = "letters, digits, '.', '_' and '-' only, not starting with '.'"
_FULL_DISK = (errno.ENOSPC, errno.EDQUOT)


class StoreError(RuntimeError):
    """A name or path that would leave the store, or a write into the store that failed."""


def check_name(value: str, what: str) -> str:
    """``value`` if it may be a path part in the store, else a :class:`StoreError` naming ``what``."""
    if not isinstance(value, str) or not _NAME.fullmatch(value):
        raise StoreError(f"{what} {value!r} is not allowed: names that become store paths may contain "
                         f"{_NAME_RULE}")
    return value


def store_root() -> Path:
    """The store directory: ``$BHIVE_STORE`` or ``./store``."""
    return Path(os.environ.get("BHIVE_STORE") or "store").expanduser().resolve()


def store_path(*parts: str) -> Path:
    """``<store>/<parts...>``; every part must be a plain name and the result inside the store."""
    root = store_root()
    for part in parts:
        check_name(part, "store path part")
    path = root.joinpath(*parts)
    # names are checked, but a symbolic link inside the store could still point elsewhere
    if not path.resolve().is_relative_to(root):
        raise StoreError(f"{path} resolves to {path.resolve()}, outside the store {root}; remove the link")
    return path


def stable_hash(data: Any) -> str:
    """sha256 of the canonical JSON form of ``data`` (key order does not matter)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def file_sha256(path: Path, block: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(block):
            digest.update(chunk)
    return digest.hexdigest()


def file_record(path: Path) -> dict[str, Any]:
    """What completeness checks compare later: the file's size and sha256."""
    return {"size": path.stat().st_size, "sha256": file_sha256(path)}


def file_problem(path: Path, recorded: dict[str, Any], verify: bool = False) -> str | None:
    """Why ``path`` does not match its :func:`file_record` (size always, sha256 with ``verify``),
    or None when it does."""
    if not path.exists():
        return "missing"
    size = path.stat().st_size
    if size != recorded["size"]:
        return f"{size} bytes, {recorded['size']} recorded"
    if verify and file_sha256(path) != recorded["sha256"]:
        return "its sha256 differs from the recorded one"
    return None


def _temporary_name(path: Path) -> Path:
    # unique per run and process, hidden, in the same directory so that the rename is atomic
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def reporting_full_disk(path: Path) -> Iterator[None]:
    """Turn "no space left on device" (or an exceeded quota) into an error naming ``path``."""
    try:
        yield
    except OSError as error:
        if error.errno in _FULL_DISK:
            raise StoreError(f"no space left while writing {path} ({os.strerror(error.errno)}); free space on "
                             f"that file system or point BHIVE_STORE elsewhere, then run again") from error
        raise


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write ``path`` through (for writers that take a file name, such as
    ``torch.save`` or ``uproot``); renamed into place on success, removed on any failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(path)
    try:
        with reporting_full_disk(path):
            yield temporary
            if not temporary.exists():
                raise StoreError(f"nothing was written to {path}")
            # the file gets the umask's permissions, as any other output
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temporary, 0o666 & ~umask)
            os.replace(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


@contextlib.contextmanager
def atomic_write(path: Path, mode: str = "w", **open_kwargs: Any) -> Iterator[IO]:
    """An open stream for ``path``, written under a temporary name and renamed on success."""
    with atomic_path(path) as temporary, open(temporary, mode, **open_kwargs) as stream:
        yield stream


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """A temporary directory that replaces ``path`` (a directory) on success, removed on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = _temporary_name(path)
    temporary.mkdir()
    try:
        with reporting_full_disk(path):
            yield temporary
            if path.exists():
                # the old content goes aside first, so that the new directory is complete when it appears
                old = _temporary_name(path)
                os.rename(path, old)
                os.rename(temporary, path)
                _remove(old)
            else:
                os.rename(temporary, path)
    except BaseException:
        _remove(temporary)
        raise


@contextlib.contextmanager
def private_directory(parent: Path, prefix: str) -> Iterator[Path]:
    """Scratch space inside ``parent`` that belongs to this run only; removed however the run ends."""
    parent.mkdir(parents=True, exist_ok=True)
    with reporting_full_disk(parent):
        directory = Path(tempfile.mkdtemp(prefix=f".{prefix}-", dir=parent))
    try:
        with reporting_full_disk(parent):
            yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def atomic_write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    with atomic_write(path) as stream:
        json.dump(data, stream, indent=2, sort_keys=True)
        stream.write("\n")


def read_json(path: Path) -> Any:
    with open(path) as stream:
        return json.load(stream)


@contextlib.contextmanager
def output_lock(directory: Path, name: str = LOCK_FILE) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``directory`` (its lock file ``name``) while writing it.

    A second run of the same task waits here until the first has finished. ``flock`` is
    advisory and, on some network and FUSE file systems (EOS among them), not shared between
    machines; there two runs both write, each through its own temporary names, and the last
    rename wins with identical content.
    """
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / name, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.warning("another run is writing %s; waiting for it to finish", directory)
            fcntl.flock(handle, fcntl.LOCK_EX)
        except OSError as error:  # a file system without locks: go on unlocked, as documented
            logger.warning("cannot lock %s (%s); concurrent runs are not serialised there", directory, error)
        try:
            yield
        finally:
            with contextlib.suppress(OSError):
                fcntl.flock(handle, fcntl.LOCK_UN)


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout."""
    version = bhive.__version__
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=Path(bhive.__file__).parent,
            capture_output=True, text=True, timeout=5, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    return f"{version}+{commit}" if commit else version
