"""A deployable model package: one directory with what a deployment needs, none of which has
to be looked up in the store.

    model.onnx                         the exported, checked graph with b-hive's metadata
                                       (:mod:`bhive.package.metadata`)
    model_card.md                      intended use, training data, inputs and outputs,
                                       performance, cost, limitations (:mod:`bhive.package.card`)
    triton/<name>/config.pbtxt         a Triton model repository (:mod:`bhive.triton`)
    triton/<name>/1/model.onnx
    package.json                       every other file with its size and sha256, and what the
                                       package was made from

The directory appears whole or not at all, and ``package.json`` is what completeness checks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bhive import triton
from bhive.onnx_io import read_metadata, write_metadata
from bhive.package.card import render
from bhive.package.metadata import metadata
from bhive.package.sources import Sources
from bhive.store import atomic_directory, atomic_write, atomic_write_json, file_problem, file_record, read_json

__all__ = ["Sources", "write_package", "check_package", "DIRECTORY", "PACKAGE_FILE"]

DIRECTORY = "package"
ONNX_FILE, CARD_FILE, PACKAGE_FILE, TRITON_DIRECTORY = "model.onnx", "model_card.md", "package.json", "triton"


class PackageError(RuntimeError):
    """A package whose files differ from what its ``package.json`` records."""


def triton_name(config: str, model: str) -> str:
    """The Triton model name: config and model, so that one server can hold several."""
    return f"{config}_{model}"


def write_package(directory: Path, sources: Sources, batching: triton.Batching) -> dict[str, Any]:
    """Write the package into ``directory`` (replaced whole) and return ``package.json``."""
    entries = metadata(sources)
    name = triton_name(sources.config, sources.model)
    triton_info = {"name": name, "max_batch_size": batching.max_batch_size,
                   "preferred_batch_sizes": list(batching.preferred_batch_sizes),
                   "max_queue_delay_microseconds": batching.max_queue_delay_microseconds}
    with atomic_directory(Path(directory)) as temporary:
        written = write_metadata(sources.onnx, temporary / ONNX_FILE, entries)
        if read_metadata(temporary / ONNX_FILE) != written:
            raise PackageError(f"the metadata read back from {directory / ONNX_FILE} differs from what was written")
        triton.write_repository(temporary / TRITON_DIRECTORY, name, temporary / ONNX_FILE, batching)
        with atomic_write(temporary / CARD_FILE) as stream:
            stream.write(render(sources, entries, triton_info))
        files = {str(path.relative_to(temporary)): file_record(path)
                 for path in sorted(temporary.rglob("*")) if path.is_file() and not path.name.startswith(".")}
        description = {"name": name, "model": sources.model, "config": sources.config,
                       "versions": dict(sources.versions), "metadata": sorted(entries), "triton": triton_info,
                       "exported": file_record(sources.onnx), "files": files}
        atomic_write_json(temporary / PACKAGE_FILE, description)
    return description


def check_package(directory: Path, verify: bool = False) -> None:
    """Raise :class:`PackageError` when a file of the package differs in size (with ``verify``:
    in sha256) from ``package.json``, or is missing."""
    directory = Path(directory)
    for name, record in read_json(directory / PACKAGE_FILE)["files"].items():
        problem = file_problem(directory / name, record, verify)
        if problem:
            raise PackageError(f"{directory / name} is damaged ({problem}); remove the package with --remove-output "
                               f"and write it again")
