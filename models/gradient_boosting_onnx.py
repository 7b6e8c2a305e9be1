"""GradientBoosting as ONNX: the candidate-group summaries of
:func:`models.gradient_boosting.summaries` built from ONNX operators, in front of skl2onnx's
tree ensemble.

A deployment feeds every b-hive graph the same named raw arrays (``global``, ``cpf``,
``mask_cpf``, ...; :meth:`Model.input_keys`). The trees read per-jet summaries (count, mean,
maximum and leading entry of each candidate group), so those are computed inside the graph,
exactly as in training: the mean and maximum over real candidates skip NaN values and are NaN
for a jet without any (the trees' missing value), the leading entry is the first slot as
stored. Trees are invariant under standardisation, so there is none.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bhive import onnx_check
from bhive.store import atomic_path
from models.base import InputSpec, Model, ModelError

if TYPE_CHECKING:
    import onnx
    from sklearn.ensemble import HistGradientBoostingClassifier

#: the opsets of the graph: PyTorch exports use 17 too; skl2onnx writes its trees in
#: ai.onnx.ml 1 (TreeEnsembleClassifier)
OPSET, ML_OPSET = 17, 1
#: the IR version of PyTorch's exports, which every onnxruntime b-hive supports reads
IR_VERSION = 8
FEATURES = "features"
PROBABILITIES = "probabilities"
TREE_PROBABILITIES = "tree_probabilities"


def summary_graph(spec: InputSpec, groups: tuple[str, ...]) -> onnx.ModelProto:
    """Raw inputs of ``groups`` in (each group, a candidate group followed by its mask),
    ``features`` out: the columns of :func:`models.gradient_boosting.summaries`, in its order."""
    from onnx import TensorProto, helper, numpy_helper

    nodes, inputs, columns = [], [], []
    constants = {"zero": np.array(0.0, np.float32), "minus_inf": np.array(-np.inf, np.float32),
                 "nan": np.array(np.nan, np.float32), "first": np.array(0, np.int64),
                 "candidate_axis": np.array([1], np.int64), "feature_axis": np.array([2], np.int64)}
    initializers = [numpy_helper.from_array(value, name) for name, value in constants.items()]

    def node(op: str, inputs_: list[str], output: str, **attributes) -> str:
        nodes.append(helper.make_node(op, inputs_, [output], name=output, **attributes))
        return output

    def sequential_sum(values: str, n_candidates: int, prefix: str) -> str:
        """The sum over candidates added one after the other, as ``summaries`` adds them
        (ReduceSum's order is the runtime's to choose, and one bit decides a tree's split)."""
        parts = [f"{prefix}candidate_{i}" for i in range(n_candidates)]
        initializers.append(numpy_helper.from_array(np.ones(n_candidates, np.int64), f"{prefix}split"))
        nodes.append(helper.make_node("Split", [values, f"{prefix}split"], parts, name=f"{prefix}split", axis=1))
        total = parts[0]
        for index, part in enumerate(parts[1:], 1):
            total = node("Add", [total, part], f"{prefix}partial_sum_{index}")
        return node("Squeeze", [total, "candidate_axis"], f"{prefix}total")

    for group in groups:
        n_features = spec.n_features(group)
        if group == "global":
            inputs.append(helper.make_tensor_value_info(group, TensorProto.FLOAT, ["jets", n_features]))
            columns.append(group)
            continue
        n_candidates = spec.n_candidates[group]
        mask = f"mask_{group}"
        inputs += [helper.make_tensor_value_info(group, TensorProto.FLOAT, ["jets", n_candidates, n_features]),
                   helper.make_tensor_value_info(mask, TensorProto.BOOL, ["jets", n_candidates])]
        p = f"{group}_"
        # a real candidate's value counts unless it is NaN (numpy's nanmean and nanmax skip it)
        real = node("Unsqueeze", [mask, "feature_axis"], p + "mask_3d")
        valid = node("And", [real, node("Not", [node("IsNaN", [group], p + "nan")], p + "not_nan")], p + "valid")
        count = node("ReduceSum", [node("Cast", [mask], p + "mask_float", to=TensorProto.FLOAT), "candidate_axis"],
                     p + "count", keepdims=1)
        n_valid = node("ReduceSum", [node("Cast", [valid], p + "valid_float", to=TensorProto.FLOAT), "candidate_axis"],
                       p + "n_valid", keepdims=0)
        total = sequential_sum(node("Where", [valid, group, "zero"], p + "valid_values"), n_candidates, p)
        mean = node("Div", [total, n_valid], p + "mean")  # 0 / 0: NaN for a jet without values
        highest = node("ReduceMax", [node("Where", [valid, group, "minus_inf"], p + "max_input")], p + "highest",
                       axes=[1], keepdims=0)
        maximum = node("Where", [node("Greater", [n_valid, "zero"], p + "has_values"), highest, "nan"], p + "max")
        leading = node("Gather", [group, "first"], p + "leading", axis=1)
        columns += [count, mean, maximum, leading]
    node("Concat", columns, FEATURES, axis=1)
    # global: its features; a candidate group: the count, then mean, maximum and leading entry
    width = sum(spec.n_features(g) if g == "global" else 1 + 3 * spec.n_features(g) for g in groups)
    graph = helper.make_graph(nodes, "gradient_boosting_summaries", inputs,
                              [helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["jets", width])],
                              initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=IR_VERSION)


@contextlib.contextmanager
def _integer_missing_value_flags() -> Iterator[None]:
    """skl2onnx 1.20.0 passes a Python bool as a leaf's ``nodes_missing_value_tracks_true``,
    which protobuf 7 refuses in an integer list; its conversion runs with that flag made an
    int, and the converter is left as it was afterwards."""
    from skl2onnx.common import tree_ensemble

    original = tree_ensemble.add_node

    @functools.wraps(original)
    def add_node(*args, nodes_missing_value_tracks_true=0, **kwargs):
        return original(*args, nodes_missing_value_tracks_true=int(nodes_missing_value_tracks_true), **kwargs)

    tree_ensemble.add_node = add_node
    try:
        yield
    finally:
        tree_ensemble.add_node = original


def tree_graph(estimator: HistGradientBoostingClassifier, n_classes: int, n_features: int) -> onnx.ModelProto:
    """skl2onnx's graph of the fitted estimator: ``features`` in, ``probabilities`` out, with a
    column for every one of the ``n_classes`` output classes (also those absent in training,
    at probability 0)."""
    from onnx import TensorProto, helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    with _integer_missing_value_flags():
        trees = convert_sklearn(estimator, initial_types=[(FEATURES, FloatTensorType([None, n_features]))],
                                options={id(estimator): {"zipmap": False}},
                                target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET})
    graph = trees.graph
    # the trees' own probabilities (their classes only) get a name of their own
    produced = next(o.name for o in graph.output if o.name != "label")
    for item in graph.node:
        item.output[:] = [TREE_PROBABILITIES if o == produced else o for o in item.output]
    # every output class gets a column: a 0/1 matrix from the estimator's classes to them
    # (products with 1 and sums with 0 are exact)
    placement = np.zeros((len(estimator.classes_), n_classes), np.float32)
    placement[np.arange(len(estimator.classes_)), np.asarray(estimator.classes_, dtype=np.int64)] = 1.0
    graph.initializer.append(numpy_helper.from_array(placement, "class_placement"))
    graph.node.append(helper.make_node("MatMul", [TREE_PROBABILITIES, "class_placement"], [PROBABILITIES],
                                       name="class_placement"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT,
                                                      ["jets", n_classes]))
    model_proto = helper.make_model(graph, opset_imports=list(trees.opset_import), ir_version=IR_VERSION)
    _one_opset_per_domain(model_proto)
    return model_proto


def _one_opset_per_domain(model: onnx.ModelProto) -> None:
    """skl2onnx, and onnx.compose after it, list the default domain more than once; a model
    names each domain once."""
    from onnx import helper

    opsets = {o.domain: o.version for o in model.opset_import}
    del model.opset_import[:]
    model.opset_import.extend(helper.make_opsetid(domain, version) for domain, version in opsets.items())


def export_onnx(model: Model, path: Path, batch: Mapping[str, np.ndarray], tolerance: float) -> dict:
    """Write the summaries of a GradientBoosting ``model`` composed with its trees to ``path``
    and check that onnxruntime reproduces its ``predict`` on ``batch`` (whole, and its first 1
    and 7 jets)."""
    import onnx
    from onnx import compose

    name = type(model).__name__
    if model.estimator is None:
        raise ModelError(f"model {name} is not fitted, so there is nothing to export")
    keys = model.input_keys()
    try:
        summaries = summary_graph(model.spec, type(model).used_groups(model.spec))
        width = summaries.graph.output[0].type.tensor_type.shape.dim[1].dim_value
        trees = tree_graph(model.estimator, model.spec.n_classes, width)
        combined = compose.merge_models(summaries, trees, io_map=[(FEATURES, FEATURES)], outputs=[PROBABILITIES])
        _one_opset_per_domain(combined)
        onnx.checker.check_model(combined, full_check=True)
    except Exception as error:
        raise ModelError(f"model {name} cannot be exported to ONNX: {type(error).__name__}: {error}") from error
    expected = [model.predict([batch])]
    with atomic_path(Path(path)) as temporary:
        onnx.save(combined, str(temporary))
        by_batch_size = onnx_check.differences(temporary, batch, keys, [PROBABILITIES], expected)
    return onnx_check.record(name, keys, [PROBABILITIES], model.classes, len(expected[0]), by_batch_size, tolerance)
