"""Fixed input sizes for the models the runtime always calls at one size (the UNet: batch 2, the
bundle's latent size, the tokenizer's window; the VAE decoder: batch 1), and the text encoder's
token window (its batch varies: two prompts for guidance, any number for CLIP).

A torch export computes every reshape from `Shape` at run time: the default UNet carries 3,878
nodes, most of them shape arithmetic, which onnxruntime folds again at every session creation
(the page's largest start-up cost) and partly runs at every step. Folding it once here, with
onnxruntime's own basic (ONNX-level, provider-neutral) optimisations and the sizes fixed, leaves
1,163. The stored weights (int8 or fp16 with their DequantizeLinear/Cast) must not be folded
into fp32, or the file would grow 4×: they are hidden from constant folding as graph inputs
during the pass and put back after it. Folding also materialises filled tensors (attention's zero
bias, [16, 64, 77]): those go back to ConstantOfShape."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

WEIGHT_ELEMENTS = 256  # initializers this large are weights, not shape constants
FOLD_LIMIT_BYTES = 1 << 30  # one protobuf holds < 2 GB; a larger UNet (SD 1.5 in fp32/fp16) keeps dynamic shapes


def fixed_sizes(model, feeds: dict, only=None) -> dict[str, int]:
    """Each named input dimension → its size in `feeds` (the verification inputs: the runtime's own sizes);
    `only`: just these (input name, axis) dimensions."""
    dims = {}
    for value in model.graph.input:
        if value.name in feeds:
            for axis, (d, size) in enumerate(zip(value.type.tensor_type.shape.dim, feeds[value.name].shape)):
                if d.dim_param and (only is None or (value.name, axis) in only):
                    dims[d.dim_param] = int(size)
    return dims


def freeze_file(folder: Path, rels: list[str], feeds: dict, chunk_bytes: int, only=None) -> tuple[list[str], dict]:
    """Fix the sizes of the model file folder/rels[0] (and its data files) in place, at the sizes of
    `feeds` (`only`: see fixed_sizes); returns its file names and what the quality report says about it."""
    import onnx

    from .onnxfiles import save_model

    model = onnx.load(str(folder / rels[0]), load_external_data=True)
    before = len(model.graph.node)
    dims = fixed_sizes(model, feeds, only)
    try:
        out = freeze_shapes(model, dims) if dims else None
    except Exception as e:  # noqa: BLE001 - an op onnxruntime cannot fold here: the build keeps dynamic sizes and says why
        return rels, {"fixed_sizes": None, "why": f"onnxruntime could not fold it: {str(e).strip().splitlines()[0][:200]}"}
    if out is None:
        return rels, {"fixed_sizes": None, "why": "no named sizes" if not dims else "too large to fold in one protobuf"}
    for rel in rels:
        (folder / rel).unlink()
    return save_model(out, folder / rels[0], chunk_bytes), {
        "fixed_sizes": dims,
        "nodes": {"before": before, "after": len(out.graph.node)},
    }


def freeze_shapes(model, dims: dict[str, int]):
    """`model` (weights loaded) with its named dimensions fixed to `dims` and its shape arithmetic
    folded; None when it is too large to fold in one protobuf."""
    import onnx
    import onnxruntime as ort

    graph = model.graph
    weights = [t for t in graph.initializer if math.prod(t.dims) >= WEIGHT_ELEMENTS]
    if sum(len(t.raw_data) for t in weights) > FOLD_LIMIT_BYTES:
        return None
    names = {t.name for t in weights}
    kept = [t for t in graph.initializer if t.name not in names]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    graph.input.extend(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in weights)
    with tempfile.TemporaryDirectory() as tmp:
        hidden, folded = Path(tmp) / "hidden.onnx", Path(tmp) / "folded.onnx"
        onnx.save(model, str(hidden))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        for name, value in dims.items():
            options.add_free_dimension_override_by_name(name, int(value))
        ort.InferenceSession(str(hidden), options, providers=["CPUExecutionProvider"])
        out = onnx.load(str(folded), load_external_data=True)
    graph = out.graph
    by_name = {t.name: t for t in weights}
    used = {i.name for i in graph.input} & names
    inputs = [i for i in graph.input if i.name not in names]
    del graph.input[:]
    graph.input.extend(inputs)
    graph.initializer.extend(by_name[n] for n in sorted(used))
    _refill_constants(graph, names)
    for value in [*graph.input, *graph.output]:
        for d in value.type.tensor_type.shape.dim:
            if d.dim_param in dims:
                d.dim_value = int(dims[d.dim_param])
    onnx.checker.check_model(out)
    return out


def _refill_constants(graph, weights: set) -> None:
    """Large folded initializers holding one repeated value → ConstantOfShape (a few bytes on disk)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    for t in list(graph.initializer):
        if t.name in weights or math.prod(t.dims) < WEIGHT_ELEMENTS:
            continue
        values = numpy_helper.to_array(t)
        if not (values == values.flat[0]).all():
            continue
        graph.initializer.remove(t)
        shape = numpy_helper.from_array(np.array(t.dims, dtype=np.int64), f"{t.name}__shape")
        graph.initializer.append(shape)
        value = numpy_helper.from_array(values.flat[:1].copy().reshape(1))
        graph.node.insert(0, onnx.helper.make_node("ConstantOfShape", [shape.name], [t.name], value=value))
