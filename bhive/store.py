"""The output store: where task outputs live, and how an output records what made it.

Outputs live under ``$BHIVE_STORE`` (default ``./store``) at
``<Task>/<config>/<versions...>/...``. A version names a result, so every output directory
carries an ``identity.json`` describing the inputs and settings that produced it; asking
for the same version with different settings is an error that says which version to bump,
never a silent reuse of the old result.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import bhive

IDENTITY_FILE = "identity.json"


class VersionConflictError(RuntimeError):
    """An existing output of this version was produced with different inputs or settings."""


def store_root() -> Path:
    """The store directory: ``$BHIVE_STORE`` or ``./store``."""
    return Path(os.environ.get("BHIVE_STORE") or "store").expanduser().resolve()


def stable_hash(data: Any) -> str:
    """sha256 of the canonical JSON form of ``data`` (key order does not matter)."""
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def atomic_write_json(path: Path, data: Any) -> None:
    """Write JSON to a temporary file in the same directory, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates the file for its owner only; outputs get the usual permissions
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(handle, "w") as stream:
            json.dump(data, stream, indent=2, sort_keys=True)
            stream.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any:
    with open(path) as stream:
        return json.load(stream)


def differing_keys(recorded: dict, expected: dict) -> list[str]:
    return sorted(k for k in set(recorded) | set(expected) if recorded.get(k) != expected.get(k))


def check_identity(directory: Path, identity: dict, bump_hint: str) -> bool:
    """Whether ``directory`` holds an output made with ``identity``.

    Returns False when there is no recorded identity yet. Raises
    :class:`VersionConflictError` when the recorded one differs, naming the differing keys
    and ``bump_hint`` (e.g. ``"--dataset-version"``).
    """
    path = directory / IDENTITY_FILE
    if not path.exists():
        return False
    recorded = read_json(path)
    differences = differing_keys(recorded, identity)
    if differences:
        raise VersionConflictError(
            f"{directory} was produced with different settings ({', '.join(differences)} changed). "
            f"A version names one result: choose a new version with {bump_hint} (or --version), "
            f"or remove the old output with --remove-output."
        )
    return True


def write_identity(directory: Path, identity: dict) -> None:
    atomic_write_json(directory / IDENTITY_FILE, identity)


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
