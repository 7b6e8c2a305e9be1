"""GradientBoosting's ONNX export: the summaries built from ONNX operators equal the numpy
ones, and the whole graph passes the export check that PyTorch models pass, with the same
named raw inputs as a PyTorch model's graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime
import pytest

from bhive.onnx_io import tensors
from models.gradient_boosting import summaries
from models.gradient_boosting_onnx import summary_graph
from tests.onnx_models import SPEC, exported, fitted_gradient_boosting, raw_batch


def test_summaries_in_the_graph_equal_the_numpy_summaries():
    batch = raw_batch()
    groups = ("global", "cpf", "vtx")
    graph = summary_graph(SPEC, groups)
    onnx.checker.check_model(graph, full_check=True)
    session = onnxruntime.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    keys = [i.name for i in session.get_inputs()]
    assert keys == ["global", "cpf", "mask_cpf", "vtx", "mask_vtx"]
    obtained = session.run(None, {k: batch[k] for k in keys})[0]
    expected = summaries(batch, groups)
    assert obtained.shape == expected.shape == (600, 3 + (1 + 3 * 2) + (1 + 3 * 3))
    # NaN exactly where numpy has it (jets without candidates, a candidate's missing value)
    np.testing.assert_array_equal(np.isnan(obtained), np.isnan(expected))
    assert np.isnan(expected).any()
    # the same bits: a tree threshold may equal a training value
    np.testing.assert_array_equal(obtained, expected)


def test_export_is_checked_like_a_torch_model_and_takes_the_same_inputs(tmp_path):
    path, check = exported("GradientBoosting", tmp_path)
    assert check["passed"] and check["max_abs_difference"] < 1e-5
    assert set(check["max_abs_difference_by_batch_size"]) == {"1", "7", "600"}
    assert check["outputs"] == ["probabilities"] and check["classes"] == list(SPEC.classes)
    torch_path, torch_check = exported("DeepJet", tmp_path)
    assert check["inputs"] == torch_check["inputs"] == ["global", "cpf", "mask_cpf", "vtx", "mask_vtx"]
    # names, element types and shapes (batch dimension included) of inputs and outputs agree
    assert tensors(path) == tensors(torch_path)
    # a class the trees never saw has probability 0, and every row sums to 1
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = raw_batch(seed=3)
    probabilities = session.run(None, {k: batch[k] for k in check["inputs"]})[0]
    assert np.all(probabilities[:, 3] == 0)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-6)


def test_an_unfitted_model_is_refused_by_name(tmp_path):
    from models.base import ModelError
    from models.gradient_boosting import GradientBoosting

    with pytest.raises(ModelError, match="GradientBoosting is not fitted"):
        GradientBoosting(SPEC).export_onnx(tmp_path / "model.onnx", raw_batch(), 1e-4)
    assert not list(tmp_path.iterdir())


def test_the_converter_is_left_as_it_was(tmp_path):
    from skl2onnx.common import tree_ensemble

    before = tree_ensemble.add_node
    fitted_gradient_boosting(raw_batch()).export_onnx(tmp_path / "model.onnx", raw_batch(), 1e-4)
    assert tree_ensemble.add_node is before
