"""A Triton Inference Server model repository for an ONNX graph, and the check that its
``config.pbtxt`` describes that graph.

Layout: ``<repository>/<name>/config.pbtxt`` and ``<repository>/<name>/1/model.onnx`` (version
1), served by Triton's ONNX Runtime backend (``platform: "onnxruntime_onnx"``). Inputs and
outputs are written from the graph itself (names, data types, dimensions without the batch
dimension, which Triton adds up to ``max_batch_size``), so they cannot drift from it.

The check reads ``config.pbtxt`` back with :func:`parse`, a reader of the protobuf text format
written here: Triton's own ``model_config`` proto ships with ``tritonclient[grpc]``, which
needs protobuf below 7 while onnx runs on protobuf 7, and the client brings ml_dtypes and
rapidjson besides, for a check that needs a text reader.
"""

from __future__ import annotations

import ast
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bhive.onnx_io import Tensor, tensors
from bhive.store import atomic_write, check_name

PLATFORM = "onnxruntime_onnx"
CONFIG_FILE = "config.pbtxt"
VERSION = "1"
#: ONNX element types -> Triton's DataType names (model_config.proto)
DATA_TYPES = {"FLOAT": "TYPE_FP32", "DOUBLE": "TYPE_FP64", "FLOAT16": "TYPE_FP16", "BFLOAT16": "TYPE_BF16",
              "BOOL": "TYPE_BOOL", "INT8": "TYPE_INT8", "INT16": "TYPE_INT16", "INT32": "TYPE_INT32",
              "INT64": "TYPE_INT64", "UINT8": "TYPE_UINT8", "UINT16": "TYPE_UINT16", "UINT32": "TYPE_UINT32",
              "UINT64": "TYPE_UINT64", "STRING": "TYPE_STRING"}


class TritonError(ValueError):
    """A graph Triton cannot batch, batching settings that contradict each other, or a
    ``config.pbtxt`` that cannot be read."""


@dataclass(frozen=True)
class Batching:
    """How Triton batches requests: at most ``max_batch_size`` jets per call, and its dynamic
    batcher waits up to ``max_queue_delay_microseconds`` to form one of the preferred sizes."""

    max_batch_size: int = 1024
    preferred_batch_sizes: tuple[int, ...] = (64, 256, 1024)
    max_queue_delay_microseconds: int = 100

    def __post_init__(self) -> None:
        if self.max_batch_size < 1:
            raise TritonError(f"max_batch_size {self.max_batch_size}: give at least 1")
        wrong = [s for s in self.preferred_batch_sizes if not 1 <= s <= self.max_batch_size]
        if wrong:
            raise TritonError(f"preferred batch sizes {wrong} are outside 1..max_batch_size ({self.max_batch_size})")
        if self.max_queue_delay_microseconds < 0:
            raise TritonError(f"max_queue_delay_microseconds {self.max_queue_delay_microseconds}: give 0 or more")


def model_dims(tensor: Tensor) -> list[int]:
    """A graph tensor's dimensions as Triton wants them: the batch dimension (the first, which
    must be free) left out, a free dimension as -1."""
    if not tensor.shape or isinstance(tensor.shape[0], int) and tensor.shape[0] > 0:
        raise TritonError(f"the graph's {tensor.name} has no free batch dimension (shape {list(tensor.shape)}); "
                          f"Triton batches along the first dimension, so export it with a dynamic one")
    return [d if isinstance(d, int) and d > 0 else -1 for d in tensor.shape[1:]]


def config_text(name: str, graph: dict[str, list[Tensor]], batching: Batching) -> str:
    """``config.pbtxt`` of a model called ``name`` for a graph described by
    :func:`bhive.onnx_io.tensors`."""
    lines = [f'name: "{name}"', f'platform: "{PLATFORM}"', f"max_batch_size: {batching.max_batch_size}"]
    for kind in ("input", "output"):
        entries = []
        for tensor in graph[f"{kind}s"]:
            if tensor.dtype not in DATA_TYPES:
                raise TritonError(f"the graph's {kind} {tensor.name} is of type {tensor.dtype}, which Triton has no "
                                  f"data type for")
            entries.append(f'  {{\n    name: "{tensor.name}"\n    data_type: {DATA_TYPES[tensor.dtype]}\n'
                           f'    dims: [ {", ".join(map(str, model_dims(tensor)))} ]\n  }}')
        lines.append(f"{kind} [\n" + ",\n".join(entries) + "\n]")
    lines.append("dynamic_batching {\n"
                 f"  preferred_batch_size: [ {', '.join(map(str, batching.preferred_batch_sizes))} ]\n"
                 f"  max_queue_delay_microseconds: {batching.max_queue_delay_microseconds}\n}}")
    return "\n".join(lines) + "\n"


def write_repository(repository: Path, name: str, onnx_path: Path, batching: Batching) -> Path:
    """``<repository>/<name>/config.pbtxt`` and ``<name>/1/model.onnx`` (a copy of
    ``onnx_path``), checked against each other; returns the model's directory."""
    check_name(name, "Triton model name")
    directory = Path(repository) / name
    text = config_text(name, tensors(onnx_path), batching)
    (directory / VERSION).mkdir(parents=True, exist_ok=True)
    with atomic_write(directory / VERSION / "model.onnx", "wb") as stream, open(onnx_path, "rb") as source:
        shutil.copyfileobj(source, stream)
    with atomic_write(directory / CONFIG_FILE) as stream:
        stream.write(text)
    found = problems(directory / CONFIG_FILE, directory / VERSION / "model.onnx")
    if found:
        raise TritonError(f"{directory / CONFIG_FILE} does not describe its graph: {'; '.join(found)}")
    return directory


def problems(config_path: Path, onnx_path: Path) -> list[str]:
    """What ``config.pbtxt`` says differently from the graph it serves: platform, and each
    input's and output's name, data type and dims, in order; empty when they agree."""
    config = parse(Path(config_path).read_text())
    found = []
    if first(config, "platform") != PLATFORM:
        found.append(f"platform is {first(config, 'platform')!r}, not {PLATFORM!r}")
    if not isinstance(first(config, "max_batch_size"), int) or first(config, "max_batch_size") < 1:
        found.append(f"max_batch_size is {first(config, 'max_batch_size')!r}; batching needs at least 1")
    graph = tensors(onnx_path)
    for kind in ("input", "output"):
        written = [(first(e, "name"), first(e, "data_type"), list(e.get("dims", []))) for e in config.get(kind, [])]
        expected = [(t.name, DATA_TYPES.get(t.dtype, t.dtype), model_dims(t)) for t in graph[f"{kind}s"]]
        if written != expected:
            found.append(f"{kind}s are {written}, the graph's {expected}")
    return found


# -- the protobuf text format ---------------------------------------------------------------

_TOKENS = re.compile(r'\s+|#[^\n]*|"(?:[^"\\\n]|\\.)*"|\'(?:[^\'\\\n]|\\.)*\'|[{}\[\]:,;<>]|[^\s{}\[\]:,;<>"\'#]+')
_INTEGER = re.compile(r"[-+]?(?:0[xX][0-9a-fA-F]+|\d+)")
_FLOAT = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?|[-+]?(?:inf|infinity|nan)", re.IGNORECASE)


def parse(text: str) -> dict[str, list[Any]]:
    """A message in protobuf text format as ``{field: [values]}``: every field a list (the
    reader knows no schema, so it cannot tell a repeated field from a single one), a message
    a dict, a string unquoted, a number an int or float, ``true``/``false`` a bool, an enum
    value its name. Comments, ``:`` before a message, ``[...]`` lists, ``<...>`` messages and
    ``,`` or ``;`` between fields are read as protobuf reads them; extensions and ``Any``
    type URLs, which a model configuration does not use, are not."""
    tokens = []
    position = 0
    for match in _TOKENS.finditer(text):
        if match.start() != position:
            break
        position = match.end()
        if not match.group().isspace() and not match.group().startswith("#"):
            tokens.append((match.group(), text.count("\n", 0, match.start()) + 1))
    if position != len(text):
        raise TritonError(f"line {text.count(chr(10), 0, position) + 1}: cannot read {text[position:position + 20]!r}")
    return _message(tokens, 0, None)[0]


def first(message: dict[str, list[Any]], field: str, default: Any = None) -> Any:
    """The value of a single field of a parsed message (its last, as protobuf keeps)."""
    values = message.get(field)
    return values[-1] if values else default


def _message(tokens: Sequence[tuple[str, int]], index: int, closing: str | None) -> tuple[dict[str, list], int]:
    message: dict[str, list[Any]] = {}
    while True:
        if index >= len(tokens):
            if closing is None:
                return message, index
            raise TritonError(f"the text ends inside a message: '{closing}' is missing")
        token, line = tokens[index]
        if token == closing:
            return message, index + 1
        if not re.fullmatch(r"[A-Za-z_]\w*", token):
            raise TritonError(f"line {line}: expected a field name, found {token!r}")
        index += 1
        colon = index < len(tokens) and tokens[index][0] == ":"
        index += colon
        if index >= len(tokens):
            raise TritonError(f"line {line}: field {token} has no value")
        if tokens[index][0] == "[":
            values, index = _list(tokens, index + 1)
        else:
            value, index = _value(tokens, index, colon)
            values = [value]
        message.setdefault(token, []).extend(values)
        if index < len(tokens) and tokens[index][0] in (",", ";"):
            index += 1


def _list(tokens: Sequence[tuple[str, int]], index: int) -> tuple[list[Any], int]:
    values: list[Any] = []
    if index < len(tokens) and tokens[index][0] == "]":
        return values, index + 1
    while True:
        value, index = _value(tokens, index, True)
        values.append(value)
        if index >= len(tokens):
            raise TritonError("the text ends inside a list: ']' is missing")
        token, line = tokens[index]
        if token == "]":
            return values, index + 1
        if token != ",":
            raise TritonError(f"line {line}: expected ',' or ']' in a list, found {token!r}")
        index += 1


def _value(tokens: Sequence[tuple[str, int]], index: int, scalar_allowed: bool) -> tuple[Any, int]:
    token, line = tokens[index]
    if token in ("{", "<"):
        return _message(tokens, index + 1, "}" if token == "{" else ">")
    if not scalar_allowed:
        raise TritonError(f"line {line}: expected ':' or a message after the field name, found {token!r}")
    if token[0] in "\"'":
        # adjacent strings are one string, as in C
        parts = []
        while index < len(tokens) and tokens[index][0][0] in "\"'":
            parts.append(ast.literal_eval(tokens[index][0]))
            index += 1
        return "".join(parts), index
    if _INTEGER.fullmatch(token):
        octal = re.fullmatch(r"[-+]?0\d+", token)
        return int(token, 8 if octal else 0), index + 1
    if _FLOAT.fullmatch(token):
        special = token.lower().lstrip("+-") in ("inf", "infinity", "nan")
        return float(token if special else token.rstrip("fF")), index + 1
    if token in ("true", "True"):
        return True, index + 1
    if token in ("false", "False"):
        return False, index + 1
    if re.fullmatch(r"[A-Za-z_]\w*", token):
        return token, index + 1
    raise TritonError(f"line {line}: cannot read the value {token!r}")
