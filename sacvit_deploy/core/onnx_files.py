"""Safety checks on ONNX files before any runtime opens them.

An ONNX graph can keep its weights in external files named inside the protobuf. A tampered or
foreign graph could name ``../../somewhere``: ONNX Runtime and TensorRT would read it. Every graph
is checked to reference only plain files in its own folder before it is loaded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Set

from sacvit_deploy.core.manifest import ArtifactError, safe_child


def external_data_files(path: Path) -> Set[str]:
    """The external-data file names a graph references, each checked to stay inside its folder."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise ArtifactError(
            f"{path}: not a readable ONNX file ({str(exc).splitlines()[0][:120]}); re-export it"
        ) from None
    names = set()
    for tensor in _all_tensors(proto.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = ExternalDataInfo(tensor).location
        try:
            safe_child(path.parent, location)
        except ArtifactError:
            raise ArtifactError(
                f"{path}: tensor '{tensor.name}' keeps its data at {location!r}, outside the graph's folder; "
                "refusing to load it (re-export the graph)"
            ) from None
        names.add(location)
    return names


def _all_tensors(graph):  # -> Iterator[onnx.TensorProto]
    """Every tensor a runtime may read data for: dense and sparse initializers, tensor and sparse
    tensor attributes (a Constant's ``value`` / ``sparse_value``), in subgraphs too. A sparse
    tensor keeps its data in two dense tensors, ``values`` and ``indices``: both are checked."""
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from _sparse_parts(sparse)
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("sparse_tensor"):
                yield from _sparse_parts(attr.sparse_tensor)
            for sparse in attr.sparse_tensors:
                yield from _sparse_parts(sparse)
            if attr.HasField("g"):
                yield from _all_tensors(attr.g)
            for sub in attr.graphs:
                yield from _all_tensors(sub)


def _sparse_parts(sparse):  # onnx.SparseTensorProto -> its dense values and indices
    yield sparse.values
    yield sparse.indices
