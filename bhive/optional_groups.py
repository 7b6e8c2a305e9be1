"""Optional candidate groups: leaving out, for both splits alike, a group the inputs lack.

A config lists in ``optional_groups`` the candidate groups its inputs may lack (NanoAOD skims
without ``SV_*``, central NanoAOD v12 without PF candidates). Whether a group is kept must not
depend on which split is being built, or a model trained on one split would meet other inputs
in the other: so the input files of *both* splits are looked at, and a group that any of them
lacks is left out of both datasets. Only each file's header and tree metadata are read, as in
the checks before processing.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from bhive import inputs
from bhive.config import SPLITS, Config
from bhive.store import stable_hash

if TYPE_CHECKING:  # importing it at run time would load coffea with this module
    from bhive.plugins.processor import JetProcessor

logger = logging.getLogger(__name__)

#: branches a missing group is named by in the log line, before "..."
_SHOWN_BRANCHES = 6
#: decisions already taken in this process: every piece job of a dataset asks again
_DECIDED: dict[str, tuple[str, ...]] = {}


def dataset_config(cfg: Config, processor_cls: type[JetProcessor]) -> Config:
    """``cfg`` without the optional groups some input file of either split lacks.

    A group is lacking from a file when a branch only that group reads (through its features,
    its custom features or the processor's matching) is not in the file; a branch the rest of
    the config reads as well stays a missing-branch error of the checks before processing.
    Logs one warning naming the groups left out and their missing branches.
    """
    if not cfg.optional_groups:
        return cfg
    files = _input_files(cfg)
    # the groups too: a config whose groups were changed in code keeps the hash of its file
    key = stable_hash([cfg.hash, str(cfg.path), {name: dataclasses.asdict(group) for name, group in
                                                 cfg.candidate_groups.items()}, cfg.optional_groups,
                       f"{processor_cls.__module__}.{processor_cls.__qualname__}", inputs.file_list_hash(files)])
    if key not in _DECIDED:
        trees = _input_branches(cfg, files)
        missing = _missing_by_group(cfg, processor_cls, trees)
        if missing:
            logger.warning(_report(cfg, missing, len(trees)))
        _DECIDED[key] = tuple(group for group in cfg.optional_groups if group in missing)
    return cfg.without_groups(_DECIDED[key])


def _input_files(cfg: Config) -> list[str]:
    """The input files of both splits; none for a simulated sample (not made yet, perhaps)."""
    if cfg.simulate is not None:
        return []
    files = [path for split in SPLITS for path in
             inputs.resolve_files(getattr(cfg.samples, split), f"samples.{split} of {cfg.path}")]
    return list(dict.fromkeys(files))


def _input_branches(cfg: Config, files: list[str]) -> dict[str, set[str]]:
    """The branches of every input: each file, or the simulation's branch style."""
    if cfg.simulate is not None:
        # imported here: it pulls in awkward, which reading file headers does not need
        from bhive.simulation.ntuple import branch_names

        style = cfg.simulate.branch_style
        return {f"the simulated sample (branch_style {style})": set(branch_names(style))}
    return {path: inputs.tree_branches(path, cfg.treename).branches for path in files}


def _missing_by_group(cfg: Config, processor_cls: type[JetProcessor],
                      trees: dict[str, set[str]]) -> dict[str, dict[str, set[str]]]:
    """group -> input -> the branches only that group reads which the input lacks."""
    everything = processor_cls(cfg, "", {})
    others = {group: processor_cls(cfg.without_groups([group]), "", {}) for group in cfg.optional_groups}
    missing: dict[str, dict[str, set[str]]] = {}
    for name, available in trees.items():
        lacking = everything.required_branches(available) - available
        for group, processor in others.items():
            own = lacking - processor.required_branches(available)
            if own:
                missing.setdefault(group, {})[name] = own
    return missing


def _report(cfg: Config, missing: dict[str, dict[str, set[str]]], n_inputs: int) -> str:
    parts = []
    for group, by_input in missing.items():
        branches = sorted(set().union(*by_input.values()))
        shown = ", ".join(branches[:_SHOWN_BRANCHES]) + (", ..." if len(branches) > _SHOWN_BRANCHES else "")
        parts.append(f"{group} ({shown} missing from {len(by_input)} of {n_inputs} input(s), e.g. "
                     f"{next(iter(by_input))})")
    return (f"{cfg.path.name}: optional group(s) left out of the train and the test dataset: {'; '.join(parts)}. "
            f"Both splits get the same inputs; remove the group(s) from optional_groups to make this an error")
