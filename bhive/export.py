"""Deployment: a trained model as ONNX, accepted only when onnxruntime reproduces it on
held-out jets (``model.onnx`` and ``onnx_check.json``)."""

from __future__ import annotations

from pathlib import Path

from bhive.config import Config
from bhive.plugins.dataloader import LoaderSettings, dataloader_class
from bhive.plugins.model import ModelError, load_model
from bhive.store import atomic_write_json, file_problem, file_record, read_json

ONNX_FILE = "model.onnx"
CHECK_FILE = "onnx_check.json"
REJECTED_ONNX, REJECTED_CHECK = "model.rejected.onnx", "onnx_check.rejected.json"


def write_onnx(cfg: Config, model_dir: Path, dataset_dir: Path, n_check_jets: int, tolerance: float,
               directory: Path) -> dict:
    """Export the model in ``model_dir`` and check it on the first ``n_check_jets`` jets of
    ``dataset_dir``. A model that fails the check is kept for inspection under names that never
    make the export complete; an accepted one is renamed into place last."""
    model = load_model(model_dir)
    loader = dataloader_class(cfg.dataloader)(dataset_dir, type(model).used_groups(model.spec), cfg.classes,
                                              LoaderSettings(batch_size=n_check_jets))
    batch = next(iter(loader.inference_batches()))
    candidate = directory / REJECTED_ONNX
    check = model.export_onnx(candidate, batch, tolerance)
    if not check["passed"]:
        atomic_write_json(directory / REJECTED_CHECK, check)
        raise ModelError(f"{check['model']}: onnxruntime differs from the model by {check['max_abs_difference']:.2e} "
                         f"(> {tolerance:.0e}; by batch size: {check['max_abs_difference_by_batch_size']}); the "
                         f"ONNX file is kept for inspection as {candidate}")
    check["file"] = file_record(candidate)
    atomic_write_json(directory / CHECK_FILE, check)
    candidate.replace(directory / ONNX_FILE)
    return check


def check_onnx(directory: Path, verify: bool = False) -> None:
    """Raise :class:`ModelError` when ``model.onnx`` differs from what its check recorded."""
    path = directory / ONNX_FILE
    problem = file_problem(path, read_json(directory / CHECK_FILE)["file"], verify)
    if problem:
        raise ModelError(f"{path} is damaged ({problem}); remove it with --remove-output and export again")
