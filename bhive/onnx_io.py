"""What an ONNX file says about itself: its named inputs and outputs (element type and shape)
and the metadata b-hive writes into it (ONNX ``metadata_props``).

A deployed graph travels without the store, so what a consumer needs to feed it and read it
(feature order, classes, discriminators, working points, where it came from) goes into the
file. Every metadata value is strict JSON (a string value is a quoted JSON string, an
undefined number null), so one parser reads all of them, in Python (``onnx.load``,
``onnxruntime``'s ``custom_metadata_map``) or in C++.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bhive.store import atomic_path

if TYPE_CHECKING:
    import onnx


@dataclass(frozen=True)
class Tensor:
    """A graph input or output: ``dtype`` is the ONNX element type's name (FLOAT, BOOL, ...);
    ``shape`` holds a fixed size as an int and a free one by its name (``jets``)."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]


def _load(model: Path | onnx.ModelProto) -> onnx.ModelProto:
    import onnx

    return model if isinstance(model, onnx.ModelProto) else onnx.load(str(model), load_external_data=False)


def tensors(model: Path | onnx.ModelProto) -> dict[str, list[Tensor]]:
    """``{"inputs": [...], "outputs": [...]}`` of a graph, in the graph's order; initializers
    listed as inputs (older IR versions) are left out."""
    from onnx import TensorProto

    graph = _load(model).graph
    constant = {initializer.name for initializer in graph.initializer}

    def described(value) -> Tensor:
        tensor = value.type.tensor_type
        shape = tuple(d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "")
                      for d in tensor.shape.dim)
        return Tensor(value.name, TensorProto.DataType.Name(tensor.elem_type), shape)

    return {"inputs": [described(v) for v in graph.input if v.name not in constant],
            "outputs": [described(v) for v in graph.output]}


def json_value(value: Any) -> Any:
    """``value`` as plain JSON: tuples as lists, NaN and infinities as null (strict JSON
    parsers, C++ ones among them, refuse them)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return value


def write_metadata(source: Path, destination: Path, entries: Mapping[str, Any]) -> dict[str, Any]:
    """``source`` with ``entries`` as its metadata (each value as strict JSON), written
    atomically to ``destination``; entries of the same key that ``source`` had are replaced.
    Returns the entries as a reader will find them (:func:`json_value`)."""
    import onnx

    model = _load(source)
    written = {key: json_value(value) for key, value in entries.items()}
    kept = [(p.key, p.value) for p in model.metadata_props if p.key not in written]
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {**dict(kept), **{key: json.dumps(value, sort_keys=True, allow_nan=False)
                                                         for key, value in written.items()}})
    onnx.checker.check_model(model)
    with atomic_path(Path(destination)) as temporary:
        onnx.save(model, str(temporary))
    return written


def read_metadata(model: Path | onnx.ModelProto) -> dict[str, Any]:
    """The metadata of a graph, each value decoded from JSON (a value another tool wrote that
    is not JSON stays the string it is)."""
    found = {}
    for prop in _load(model).metadata_props:
        try:
            found[prop.key] = json.loads(prop.value)
        except json.JSONDecodeError:
            found[prop.key] = prop.value
    return found
