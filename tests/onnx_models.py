"""Small exported models for the deployment tests: a generated batch of raw jets (with jets
without candidates, with every slot real and with NaN candidate values), a GradientBoosting
fitted on it and a small DeepJet, both exported to ONNX through their own export_onnx."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bhive.standardisation import feature_statistics
from models.base import InputSpec
from models.deepjet import DeepJet
from models.gradient_boosting import GradientBoosting, summaries

SPEC = InputSpec(features={"global": ("jet_pt", "jet_eta", "npv"), "cpf": ("pfcand_pt", "pfcand_sip"),
                           "vtx": ("sv_mass", "sv_dxysig", "sv_ntracks")},
                 n_candidates={"cpf": 6, "vtx": 3}, classes=("b", "c", "uds", "g"))


def raw_batch(n_jets: int = 600, seed: int = 0, nan: bool = True) -> dict[str, np.ndarray]:
    """Raw inputs and labels as the dataloader gives them, candidate slots past the real ones
    zero; the first jets of each group hold the padding patterns a deployment sees, and with
    ``nan`` a few candidates a NaN value (which datasets drop, but the trees' summaries skip)."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 3, n_jets)  # no 'g' jet: a class the trees never see
    batch = {"global": np.stack([30 + rng.exponential(60, n_jets), rng.uniform(-2.5, 2.5, n_jets),
                                 rng.poisson(30, n_jets)], axis=1).astype(np.float32),
             "label": label, "weight": np.ones(n_jets, np.float32)}
    for index, group in enumerate(("cpf", "vtx")):
        n_candidates, n_features = SPEC.n_candidates[group], SPEC.n_features(group)
        real = np.arange(n_candidates)[None, :] < rng.integers(0, n_candidates + 1, n_jets)[:, None]
        real[10 * index:10 * index + 10] = False      # no candidate
        real[10 * index + 30:10 * index + 40] = True  # every slot real
        values = rng.normal(np.where(label == 0, 2.0, 0.0)[:, None, None], 1.0, (n_jets, n_candidates, n_features))
        values = np.where(real[..., None], values, 0.0).astype(np.float32)
        if nan:
            values[50:60, 0, 0] = np.nan              # a missing value of a real candidate (or not)
        batch[group], batch[f"mask_{group}"] = values, real
    return batch


def fitted_gradient_boosting(batch: dict[str, np.ndarray]) -> GradientBoosting:
    """GradientBoosting on ``batch``: a few trees, enough to use the summaries."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = GradientBoosting(SPEC, max_iter=15)
    model.estimator = HistGradientBoostingClassifier(max_iter=15, max_leaf_nodes=15, random_state=0)
    model.estimator.fit(summaries(batch, model.groups), batch["label"])
    return model


def small_deepjet(batch: dict[str, np.ndarray]) -> DeepJet:
    """DeepJet at a tenth of its width, standardised on ``batch``."""
    import torch

    torch.manual_seed(0)
    model = DeepJet.create(SPEC, dense=(32, 32), dropout=0.0, width_scale=0.1)
    model.set_standardisation(feature_statistics([batch], model.groups))
    return model.eval()


def exported(kind: str, directory: Path, batch: dict[str, np.ndarray] | None = None) -> tuple[Path, dict]:
    """(path of model.onnx, its check) for ``kind`` 'GradientBoosting' or 'DeepJet'."""
    batch = raw_batch(nan=kind == "GradientBoosting") if batch is None else batch
    model = fitted_gradient_boosting(batch) if kind == "GradientBoosting" else small_deepjet(batch)
    path = Path(directory) / kind / "model.onnx"
    check = model.export_onnx(path, batch, 1e-4)
    assert check["passed"], check
    return path, check
