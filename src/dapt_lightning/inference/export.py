"""``dapt export --format onnx``: a tuned model as one ONNX graph, preprocessed images -> class logits.

The class text features are computed once and stored in the graph as a constant, so the text tower is not part of
it. The metadata says what the graph expects and answers: the preprocessing (size, mean, std, interpolation, resize
mode), the class names by logit index, the method and the CLIP it was trained on.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dapt_lightning.inference.classifier import Classifier
from dapt_lightning.storage import atomic_write_bytes

FORMATS = ("onnx",)
INPUT_NAME, OUTPUT_NAME = "images", "logits"
METADATA_PREFIX = "dapt."
"""ONNX metadata keys: ``dapt.classnames``, ``dapt.preprocessing``, ``dapt.method``, ``dapt.clip`` (JSON values)."""


def export_metadata(classifier: Classifier, classnames: list[str]) -> dict[str, str]:
    """What an exported graph records about itself, as ONNX metadata (JSON strings)."""
    method = classifier.method
    identity = method.clip_identity.to_dict() if method.clip_identity is not None else {}
    values: dict[str, Any] = {
        "classnames": classnames,
        "preprocessing": {**classifier.preprocessing.__dict__, "input": INPUT_NAME, "layout": "NCHW, float32, RGB"},
        "method": {"class": type(method).__name__, "name": method.name},
        "clip": identity,
        "output": {"name": OUTPUT_NAME, "meaning": "class logits (softmax gives probabilities), by classnames index"},
    }
    return {METADATA_PREFIX + key: json.dumps(value) for key, value in values.items()}


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The ``dapt.*`` metadata of an exported ONNX file, decoded (``classnames``, ``preprocessing``, ...)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {
        prop.key.removeprefix(METADATA_PREFIX): json.loads(prop.value)
        for prop in model.metadata_props
        if prop.key.startswith(METADATA_PREFIX)
    }


def export_graph(graph: torch.nn.Module, image_size: int, opset: int = 18) -> Any:
    """``graph`` (images ``[N, 3, S, S]`` -> logits) traced by torch's ONNX exporter, as an ``onnx.ModelProto`` with
    a dynamic batch size."""
    try:
        import onnx
    except ImportError as error:
        raise ImportError("dapt export needs onnx and onnxscript: pip install 'dapt_lightning[export]'") from error
    example = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with tempfile.TemporaryDirectory() as scratch, contextlib.redirect_stdout(io.StringIO()):
        raw = Path(scratch) / "graph.onnx"  # the exporter prints its progress: kept off the user's console
        torch.onnx.export(
            graph,
            (example,),
            str(raw),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_shapes={"images": {0: batch}},
            opset_version=opset,
            dynamo=True,
            external_data=False,
        )
        return onnx.load(str(raw))


def export_onnx(
    classifier: Classifier, path: str | Path, classnames: Sequence[str] | str | None = None, opset: int = 18
) -> Path:
    """Write ``classifier`` for ``classnames`` (None: its own) as an ONNX graph at ``path`` (atomically).

    The batch size is dynamic; the image size is the CLIP's (``preprocessing.size`` in the metadata).
    """
    names = classifier.classnames_for(classnames)
    try:
        model = export_graph(classifier.graph(names).to("cpu"), classifier.preprocessing.size, opset)
    finally:
        classifier.method.to(classifier.device)  # the graph shares the classifier's model, traced on the CPU
    for key, value in export_metadata(classifier, names).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.producer_name = "dapt_lightning"
    path = Path(path)
    atomic_write_bytes(path, model.SerializeToString())
    return path
