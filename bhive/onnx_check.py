"""The check every ONNX export passes before it is accepted: onnxruntime on the written file
against the model's own outputs on held-out jets, run whole and at small batch sizes.

A model's export writes its graph its own way (PyTorch's exporter, skl2onnx, ...); what
"reproduces the model" means is the same for all of them, so it lives here once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: batch sizes the check runs at besides the whole check batch; exports trace other sizes
#: (PyTorch's 8 jets), so a batch size frozen into a graph cannot go unnoticed
CHECK_BATCH_SIZES = (1, 7)


def differences(path: Path, batch: Mapping[str, np.ndarray], inputs: Sequence[str], outputs: Sequence[str],
                expected: Sequence[np.ndarray]) -> dict[str, float]:
    """Largest difference between onnxruntime's ``outputs`` and ``expected`` (one array per
    output, for every jet of ``batch``), by batch size: the first 1 and 7 jets and all of them.

    Differences are relative to the size of the expected value where it exceeds 1: regression
    outputs are in the targets' units (GeV for a jet pt), probabilities are at most 1.
    """
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n_jets = len(expected[0])
    found = {}
    for size in sorted({*(s for s in CHECK_BATCH_SIZES if s < n_jets), n_jets}):
        feeds = {k: np.ascontiguousarray(batch[k][:size]) for k in inputs}
        obtained = session.run(list(outputs), feeds)
        found[str(size)] = max(float(np.max(np.abs(o - e[:size]) / np.maximum(np.abs(e[:size]), 1.0)))
                               for o, e in zip(obtained, expected)) if size else 0.0
    return found


def record(model: str, inputs: Sequence[str], outputs: Sequence[str], classes: Sequence[str], n_jets: int,
           by_batch_size: Mapping[str, float], tolerance: float, **extra: Any) -> dict:
    """The check as ``onnx_check.json`` records it; ``passed`` when every difference is within
    ``tolerance``."""
    difference = max(by_batch_size.values())
    return {"model": model, "inputs": list(inputs), "outputs": list(outputs), "classes": list(classes), **extra,
            "n_jets_checked": n_jets, "max_abs_difference": difference,
            "max_abs_difference_by_batch_size": dict(by_batch_size), "tolerance": tolerance,
            "passed": difference <= tolerance}
