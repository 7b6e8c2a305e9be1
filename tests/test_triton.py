"""The Triton model repository: config.pbtxt describes the graph it serves (names, data types,
dims without the batch dimension) for a PyTorch model and for GradientBoosting, read back with
b-hive's text-format reader, which is itself checked against protobuf's own on the fields of
Triton's model configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from bhive import triton
from bhive.onnx_io import Tensor, tensors
from tests.onnx_models import SPEC, exported

#: the fields b-hive writes, as Triton's model_config.proto declares them (names, numbers, types)
MODEL_CONFIG_PROTO = {
    "ModelInput": [("name", 1, "string", False), ("data_type", 2, "DataType", False), ("dims", 4, "int64", True)],
    "ModelOutput": [("name", 1, "string", False), ("data_type", 2, "DataType", False), ("dims", 3, "int64", True)],
    "ModelDynamicBatching": [("preferred_batch_size", 1, "int32", True),
                             ("max_queue_delay_microseconds", 2, "uint64", False)],
    "ModelConfig": [("name", 1, "string", False), ("platform", 2, "string", False),
                    ("max_batch_size", 4, "int32", False), ("input", 5, "ModelInput", True),
                    ("output", 6, "ModelOutput", True), ("dynamic_batching", 11, "ModelDynamicBatching", False)],
}
DATA_TYPE_VALUES = ("TYPE_INVALID", "TYPE_BOOL", "TYPE_UINT8", "TYPE_UINT16", "TYPE_UINT32", "TYPE_UINT64",
                    "TYPE_INT8", "TYPE_INT16", "TYPE_INT32", "TYPE_INT64", "TYPE_FP16", "TYPE_FP32", "TYPE_FP64",
                    "TYPE_STRING", "TYPE_BF16")


def model_config_class():
    """A protobuf message class for the part of Triton's ModelConfig above."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    scalar = {"string": "TYPE_STRING", "int64": "TYPE_INT64", "int32": "TYPE_INT32", "uint64": "TYPE_UINT64"}
    file = descriptor_pb2.FileDescriptorProto(name="bhive_test_model_config.proto", package="inference",
                                              syntax="proto3")
    enum = file.enum_type.add(name="DataType")
    for number, name in enumerate(DATA_TYPE_VALUES):
        enum.value.add(name=name, number=number)
    for message_name, fields in MODEL_CONFIG_PROTO.items():
        message = file.message_type.add(name=message_name)
        for name, number, kind, repeated in fields:
            field = message.field.add(name=name, number=number)
            field.label = field.LABEL_REPEATED if repeated else field.LABEL_OPTIONAL
            if kind in scalar:
                field.type = getattr(field, scalar[kind])
            elif kind == "DataType":
                field.type, field.type_name = field.TYPE_ENUM, ".inference.DataType"
            else:
                field.type, field.type_name = field.TYPE_MESSAGE, f".inference.{kind}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("inference.ModelConfig"))


def as_lists(value):
    """protobuf's dict of a message in the reader's shape: every field a list."""
    if isinstance(value, dict):
        return {k: [as_lists(i) for i in (v if isinstance(v, list) else [v])] for k, v in value.items()}
    return value


@pytest.mark.parametrize("kind", ["DeepJet", "GradientBoosting"])
def test_config_describes_the_graph(kind, tmp_path):
    path, check = exported(kind, tmp_path / "export")
    batching = triton.Batching(max_batch_size=512, preferred_batch_sizes=(64, 256), max_queue_delay_microseconds=50)
    directory = triton.write_repository(tmp_path / "triton", f"unit_{kind}", path, batching)
    assert directory == tmp_path / "triton" / f"unit_{kind}"
    assert (directory / "1" / "model.onnx").read_bytes() == path.read_bytes()
    text = (directory / "config.pbtxt").read_text()
    config = triton.parse(text)
    assert triton.first(config, "name") == f"unit_{kind}"
    assert triton.first(config, "platform") == "onnxruntime_onnx"
    assert triton.first(config, "max_batch_size") == 512
    batcher = triton.first(config, "dynamic_batching")
    assert batcher == {"preferred_batch_size": [64, 256], "max_queue_delay_microseconds": [50]}
    # the graph's inputs and outputs, read from the ONNX file, batch dimension left out
    expected_inputs = [("global", "TYPE_FP32", [3]), ("cpf", "TYPE_FP32", [6, 2]), ("mask_cpf", "TYPE_BOOL", [6]),
                       ("vtx", "TYPE_FP32", [3, 3]), ("mask_vtx", "TYPE_BOOL", [3])]
    written = [(triton.first(e, "name"), triton.first(e, "data_type"), e["dims"]) for e in config["input"]]
    assert written == expected_inputs
    graph = tensors(path)
    assert [(t.name, t.dtype, list(t.shape)) for t in graph["inputs"]] == [
        (name, "BOOL" if dtype == "TYPE_BOOL" else "FLOAT", ["jets", *dims]) for name, dtype, dims in expected_inputs]
    outputs = [(triton.first(e, "name"), triton.first(e, "data_type"), e["dims"]) for e in config["output"]]
    assert outputs == [("probabilities", "TYPE_FP32", [SPEC.n_classes])] == [
        (t.name, "TYPE_FP32", list(t.shape[1:])) for t in graph["outputs"]]
    assert triton.problems(directory / "config.pbtxt", directory / "1" / "model.onnx") == []

    # protobuf's own text-format reader accepts the file for Triton's fields and reads the same
    from google.protobuf import json_format, text_format

    message = text_format.Parse(text, model_config_class()())
    read = json_format.MessageToDict(message, preserving_proto_field_name=True)
    assert as_lists(read) == {**config, "max_batch_size": [512],
                              "input": [{**e, "dims": [str(d) for d in e["dims"]]} for e in config["input"]],
                              "output": [{**e, "dims": [str(d) for d in e["dims"]]} for e in config["output"]],
                              "dynamic_batching": [{**batcher, "max_queue_delay_microseconds": ["50"]}]}


def test_a_config_that_differs_from_its_graph_is_reported(tmp_path):
    path, _ = exported("GradientBoosting", tmp_path / "export")
    directory = triton.write_repository(tmp_path / "triton", "gb", path, triton.Batching())
    config = directory / "config.pbtxt"
    text = config.read_text().replace("dims: [ 6, 2 ]", "dims: [ 2, 6 ]")
    config.write_text(text.replace("TYPE_BOOL", "TYPE_INT8", 1))
    found = triton.problems(config, directory / "1" / "model.onnx")
    assert len(found) == 1 and "('cpf', 'TYPE_FP32', [2, 6])" in found[0] and "TYPE_INT8" in found[0]
    config.write_text(config.read_text().replace('"onnxruntime_onnx"', '"tensorrt_plan"'))
    assert "platform is 'tensorrt_plan'" in triton.problems(config, directory / "1" / "model.onnx")[0]


def test_batching_settings_and_graphs_triton_cannot_batch_are_refused():
    with pytest.raises(triton.TritonError, match=r"preferred batch sizes \[2048\] are outside 1..max_batch_size"):
        triton.Batching(max_batch_size=1024, preferred_batch_sizes=(256, 2048))
    with pytest.raises(triton.TritonError, match="max_batch_size 0"):
        triton.Batching(max_batch_size=0, preferred_batch_sizes=())
    fixed = {"inputs": [Tensor("global", "FLOAT", (16, 3))], "outputs": [Tensor("probabilities", "FLOAT", ("jets", 4))]}
    with pytest.raises(triton.TritonError, match="global has no free batch dimension"):
        triton.config_text("m", fixed, triton.Batching())
    complex_input = {"inputs": [Tensor("x", "COMPLEX64", ("jets", 3))], "outputs": []}
    with pytest.raises(triton.TritonError, match="COMPLEX64, which Triton has no data type for"):
        triton.config_text("m", complex_input, triton.Batching())
    with pytest.raises(Exception, match="Triton model name '../m'"):
        triton.write_repository(Path("nowhere"), "../m", Path("model.onnx"), triton.Batching())


def test_text_format_reader():
    text = """
    # a comment
    name: "a \\"quoted\\" name" platform: 'onnx' 'runtime'
    max_batch_size: 0x10;
    instance_group [ { kind: KIND_CPU, count: 2 }, { count: 1 } ]
    optimization < priority: PRIORITY_MAX >
    parameters { key: "x" value { string_value: "1" } }
    parameters: { key: "y" }
    dims: [ -1, 3 ] dims: 4
    flags: [ true, false ]
    numbers: [ 1.5, -2e3, 3f, -inf, nan ]
    empty: []
    """
    config = triton.parse(text)
    assert config["name"] == ['a "quoted" name'] and config["platform"] == ["onnxruntime"]
    assert config["max_batch_size"] == [16]
    assert config["instance_group"] == [{"kind": ["KIND_CPU"], "count": [2]}, {"count": [1]}]
    assert config["optimization"] == [{"priority": ["PRIORITY_MAX"]}]
    assert [triton.first(p, "key") for p in config["parameters"]] == ["x", "y"]
    assert config["parameters"][0]["value"] == [{"string_value": ["1"]}]
    assert config["dims"] == [-1, 3, 4] and config["flags"] == [True, False] and config["empty"] == []
    assert config["numbers"][:4] == [1.5, -2000.0, 3.0, float("-inf")] and config["numbers"][4] != config["numbers"][4]
    assert triton.first(config, "missing", "default") == "default"
    for broken, message in (('name: "open', "line 1: cannot read"), ("input [ { name: 1 }", "'\\]' is missing"),
                            ("input { name: 1", "'}' is missing"), ("name 5", "expected ':' or a message"),
                            ("dims: [ 1 2 ]", "expected ',' or '\\]'"), (": 5", "expected a field name"),
                            ("name:", "field name has no value")):
        with pytest.raises(triton.TritonError, match=message):
            triton.parse(broken)
