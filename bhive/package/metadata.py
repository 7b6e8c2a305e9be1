"""The metadata a packaged ``model.onnx`` carries (ONNX ``metadata_props``, each value JSON;
:mod:`bhive.onnx_io` writes and reads it): enough to feed the graph and read its outputs
without the store.

========================  ===============================================================
key                       value
========================  ===============================================================
``bhive_metadata``        format version of these keys (1)
``model``                 model class
``inputs``                graph input names, in order
``features``              feature names per group, in the order of the input's last axis
``n_candidates``          candidates per candidate group (the input's second axis)
``classes``               output classes, in the order of the ``probabilities`` columns
``class_truth_labels``    the truth labels each class is made of
``discriminators``        name -> signal and background classes and the formula
``working_points``        discriminator, working point, selection derived on, target
                          mis-id, threshold, efficiency and mis-id there (a threshold
                          no jet reaches, where no cut meets the target, is null)
``charm_working_points``  pairs of thresholds (CvsL and CvsB), where the config has them
``regression``            per target: loss, quantiles and columns of ``regression`` (models
                          with regression targets only)
``config``                config name; ``config_hash``: sha256 of the resolved config
                          the model was trained with
``code_version``          b-hive version (and git commit) of the training;
                          ``packaged_with``: of the packaging
``versions``              dataset, training and test dataset versions
========================  ===============================================================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bhive.package.sources import Sources
from bhive.store import code_version

METADATA_VERSION = 1
WORKING_POINT_KEYS = ("discriminator", "working_point", "derived_on", "target_misid", "threshold", "efficiency",
                      "misid")
CHARM_KEYS = ("discriminators", "working_point", "derived_on", "target_misids", "thresholds", "efficiency", "misids")


def formula(signal: Sequence[str], background: Sequence[str]) -> str:
    """The discriminator in terms of the class probabilities, e.g. ``isB / (isB + isL)``."""
    numerator = " + ".join(signal)
    return f"{numerator if len(signal) == 1 else f'({numerator})'} / ({' + '.join([*signal, *background])})"


def metadata(sources: Sources) -> dict[str, Any]:
    """The ``metadata_props`` of a packaged graph (the table above)."""
    spec, description = sources.spec, sources.description
    entries: dict[str, Any] = {
        "bhive_metadata": METADATA_VERSION,
        "model": sources.model,
        "inputs": list(sources.check["inputs"]),
        "features": {group: list(spec["features"][group]) for group in sources.groups},
        "n_candidates": {group: spec["n_candidates"][group] for group in sources.groups if group != "global"},
        "classes": list(spec["classes"]),
        "class_truth_labels": dict(description.get("classes", {})),
        "discriminators": {name: {"signal": list(signal), "background": list(background),
                                  "formula": formula(signal, background)}
                           for name, (signal, background) in sources.discriminators.items()},
        "working_points": [{key: row[key] for key in WORKING_POINT_KEYS} for row in sources.working_points],
        "config": sources.config,
        "config_hash": description.get("config_hash"),
        "code_version": description.get("code_version"),
        "packaged_with": code_version(),
        "versions": dict(sources.versions),
    }
    if sources.charm_working_points:
        entries["charm_working_points"] = [{key: row[key] for key in CHARM_KEYS}
                                           for row in sources.charm_working_points]
    if "regression" in sources.check:
        entries["regression"] = list(sources.check["regression"])
    return entries
