"""Smaller model files for the browser: compact-storage, fp16, int8 and int4 versions of an exported fp32 component.

Why these: fp16 halves every weight and runs natively on WebGPU adapters with `shader-f16`;
int8 (dynamic, MatMul/Gemm only) shrinks the big matrices and runs at about fp32 speed on WASM;
int4 (weight-only MatMulNBits, which both onnxruntime-web providers implement) is smallest for
transformer-heavy graphs. Convolutions stay fp32 under int8/int4: ConvInteger is 2× slower on
CPU and missing on WebGPU (see RECIPES.md).

The storage-only precisions change what is downloaded, not what is computed (compute stays fp32,
so every provider runs them, WASM included, at fp32 speed):
  fp16w     every fp32 weight stored as float16, followed by a Cast to float32;
  int8w     weight-only int8 for Gather tables (a text encoder's token embeddings: per-row scales,
            dequantized per looked-up row in the graph: Gather on the int8 table and on the scales,
            Cast, Mul), fp16w for the rest;
  int8w-all int8w, plus Conv/MatMul/Gemm weights as int8 with per-output-channel scales (Cast, Mul).
Every Cast/Mul whose inputs are all stored weights is constant-folded by onnxruntime (native and web:
graphOptimizationLevel "all" includes it) when the session is created, so the session holds the
same fp32 weights and runs the same kernels as the fp32 file; only the Gather tables stay int8 in
memory, dequantized row by row (77 rows per prompt). Plain ONNX ops only: no contrib op to depend on.

int8c computes in int8 (for the UNet: the page's WASM spends most of a step in fp32 Conv and MatMul,
3-4x slower than native; integer kernels take it to about 0.65x, see RECIPES.md "int8 compute"):
  int8c     dynamic quantization (onnxruntime's quantize_dynamic after quant_pre_process): every Conv
            and every MatMul/Gemm with a stored weight becomes ConvInteger / MatMulInteger on uint8
            weights (QUInt8, one scale and zero point per tensor) and uint8 activations quantized at
            run time per tensor (DynamicQuantizeLinear), then Cast and Mul back to fp32; bias, norms,
            softmax, attention's activation x activation MatMuls, SiLU/GELU stay fp32. Plain ONNX ops
            (onnxruntime fuses them into its DynamicQuantizeMatMul when the session is created).
            QUInt8, not QInt8, weights: onnxruntime-web's int8-weight Conv is a slow path (6x slower).
            Per-tensor, not per-channel: per-channel weights measured no better (UNet eps error 0.0070
            vs 0.0072 relative rms) and are a less travelled kernel path.
  Stays fp32 (INT8C_KEEP_FP32), measured on the default UNet (relative rms error of its output vs
  fp32 with only that group in int8, random inputs, t = 50 / 500 / 950; share of the UNet's MACs):
    conv_in, conv_out   0.010-0.012, 0.2% of MACs: the largest error of any group, as conv_out writes
                        the predicted noise itself and conv_in reads the latent (per-tensor uint8 of
                        the raw latent). Free to keep, so kept.
    time embedding      (time_embedding.linear_1/2, every resnet's time_emb_proj) 0.0003, 0.1% of MACs:
                        batch-2 vectors, no speed to win; the sinusoidal input loses little, kept fp32
                        as it conditions every block.
  In int8: resnet convs (0.006-0.008 alone, 33% of MACs), feed-forward (0.005 at t=50, 48%),
  attention projections q/k/v/out (0.002, 8%; keeping them fp32 moved the total only 0.0072 -> 0.0068),
  proj_in/out, down/upsamplers. Whole UNet: 0.006-0.0095, the same as int8w-all's stored-weight
  rounding (0.006-0.007); all int8 with conv_in/conv_out: 0.014.
The VAE decoder (conv_in, conv_out, post_quant_conv kept fp32) and the CLIP image tower take int8c
too: in onnxruntime-web WASM the VAE decoder goes from 82 to 43 ms, the UNet from 64 to 36 ms (Node,
1 thread); with the VAE alone in int8c the final image is at 41-46 dB PSNR vs fp32; CLIP's similarities
move by at most 0.011 (as with the int8w-all tower). Numbers: bench/results/int8.md (app/int8_table.py).
Not in the `small` target, because the page's image would no longer be the native image: int8
activations make a model's output piecewise constant in its input (each rounding is a step), so two
correct runtimes whose fp32 ops differ in the last bit (WASM vs native kernels, or native onnxruntime
at two optimisation levels) round some activation the other way and re-draw the quantisation noise
downstream: the UNet's output moves by 0.023 (of 3.9) for a 1e-5 relative change of its input, and
the page's image of an int8c build differs from the native image by up to 19-44/255 (PSNR 37.5-45 dB),
where tests/test_small_bundle.py holds the small build to 2/255.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .onnxfiles import CHUNK_BYTES, save_model

OPTIONAL_COMPONENTS = ("clip_image", "umap_project")  # converted when a precision names them (see exporter.resolve_precision)
STORAGE_PRECISIONS = ("fp16w", "int8w", "int8w-all")  # compact storage, fp32 compute (see above)
PRECISIONS = ("fp32", "fp16", "int8", "int4", "int8c", *STORAGE_PRECISIONS)
# int8c: the Conv/MatMul/Gemm nodes whose name holds one of these stay fp32 (see above)
INT8C_KEEP_FP32 = ("/conv_in/", "/conv_out/", "/post_quant_conv/", "/time_embedding/", "/time_emb_proj/")
# sensible defaults per target: what each onnxruntime-web provider runs well. A target may name the
# optional components (clip_image, umap_project) too; those it leaves out stay fp32.
DEFAULTS = {
    "wasm": {"text_encoder": "int8", "unet": "fp32", "vae_decoder": "fp32"},
    "webgpu": {"text_encoder": "fp16", "unet": "fp16", "vae_decoder": "fp16"},
    "fp32": {"text_encoder": "fp32", "unet": "fp32", "vae_decoder": "fp32"},
    # the page's default build: fp32 compute on every provider, about a third of the fp32 download
    # (int8c would take the page's UNet to 0.56x the time, but its images would differ from native ones: see above)
    "small": {
        "text_encoder": "int8w",
        "unet": "int8w-all",
        "vae_decoder": "fp16w",
        "clip_image": "int8w-all",
        "umap_project": "fp16w",
    },
}


def quantize(src: Path, dst: Path, precision: str, chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    """Write `precision` version of the fp32 model file `src` to `dst`; returns the written file names."""
    import onnx

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        model = onnx.load(str(src), load_external_data=True)
        return save_model(model, dst, chunk_bytes)
    if precision in STORAGE_PRECISIONS:
        model = onnx.load(str(src), load_external_data=True)
        compact_weights(model, int8_gather=precision != "fp16w", int8_weights=precision == "int8w-all")
        return save_model(model, dst, chunk_bytes)
    if precision == "fp16":
        from onnx.external_data_helper import load_external_data_for_model
        from onnxruntime.transformers.float16 import convert_float_to_float16

        big = _has_external(src) or src.stat().st_size > 1_800_000_000
        if big:  # shape inference cannot hold a >2 GB proto in memory: infer on the file first
            with tempfile.TemporaryDirectory() as tmp:
                inferred = Path(tmp) / "inferred.onnx"
                onnx.shape_inference.infer_shapes_path(str(src), str(inferred))
                model = onnx.load(str(inferred), load_external_data=False)
                load_external_data_for_model(model, str(src.parent))  # the weights stay beside the source
        else:
            model = onnx.load(str(src), load_external_data=True)
        model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=big)
        return save_model(model, dst, chunk_bytes)
    if precision == "int8c":
        return save_model(int8_compute(src), dst, chunk_bytes)
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / dst.name
            quantize_dynamic(
                str(src),
                str(out),
                op_types_to_quantize=["MatMul", "Gemm"],
                weight_type=QuantType.QInt8,
                use_external_data_format=src.stat().st_size > 1_800_000_000 or _has_external(src),
            )
            return save_model(onnx.load(str(out), load_external_data=True), dst, chunk_bytes)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src), load_external_data=True)
    q = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=True, op_types_to_quantize=("MatMul",))
    q.process()
    return save_model(q.model.model, dst, chunk_bytes)


def int8_compute(src: Path, keep_fp32: tuple = INT8C_KEEP_FP32, per_channel: bool = False):
    """The int8c model of the fp32 model file `src` (see above): Conv/MatMul/Gemm on uint8 weights and
    dynamically quantized uint8 activations, except the nodes whose name holds one of `keep_fp32`."""
    import logging

    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    big = src.stat().st_size > 1_800_000_000 or _has_external(src)
    with tempfile.TemporaryDirectory() as tmp:
        pre, out = Path(tmp) / "pre.onnx", Path(tmp) / "int8c.onnx"
        level = logging.getLogger().level
        try:  # quant_pre_process logs its advice (symbolic shapes skipped on purpose) at WARNING
            logging.getLogger().setLevel(logging.ERROR)
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True, save_as_external_data=big)
        finally:
            logging.getLogger().setLevel(level)
        names = [
            name
            for n in onnx.load(str(pre), load_external_data=False).graph.node
            if n.op_type in ("Conv", "MatMul", "Gemm") and any(k in n.name for k in keep_fp32)
            for name in (n.name, f"{n.name}_MatMul")  # quantize_dynamic turns Gemm into NAME_MatMul + Add first
        ]
        quantize_dynamic(
            str(pre),
            str(out),
            op_types_to_quantize=["Conv", "MatMul", "Gemm"],
            weight_type=QuantType.QUInt8,
            per_channel=per_channel,
            nodes_to_exclude=names,
            use_external_data_format=big,
        )
        return onnx.load(str(out), load_external_data=True)


def _has_external(path: Path) -> bool:
    return any(p.name.startswith(path.stem) and p != path for p in path.parent.iterdir())


MIN_ELEMENTS = 256  # smaller fp32 tensors stay as they are: they weigh nothing and some are shapes' scales
FP16_MAX = 65504.0


def compact_weights(model, int8_gather: bool = True, int8_weights: bool = False, min_elements: int = MIN_ELEMENTS) -> dict:
    """Rewrite `model` in place so its fp32 weights are stored compactly and dequantized in the graph.

    int8_gather: 2-D tables read only by Gather (axis 0) → int8 rows + fp32 per-row scales, looked up
    and dequantized per row at run time. int8_weights: Conv / MatMul / Gemm weights → int8 with
    per-output-channel scales (Cast, Mul; folded at session creation). Every other fp32 weight of at
    least `min_elements` → float16 + Cast (folded too); one that float16 cannot hold stays fp32.
    Returns counts of what was done."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    _constants_to_initializers(graph, min_elements)
    consumers: dict[str, list] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, i))
    for sub in _subgraph_inputs(graph):  # names read inside If/Loop bodies: leave those weights alone
        consumers.setdefault(sub, []).append((None, -1))
    outputs = {o.name for o in graph.output}
    inputs = {i.name for i in graph.input}
    keep, new_inits, pre_nodes = [], [], []
    done = {"int8_gather": 0, "int8_weight": 0, "fp16": 0, "kept_fp32": 0}
    gather_rewrites = []
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | {t.name for t in graph.initializer}

    def fresh(base):
        name, i = base, 0
        while name in taken:
            i += 1
            name = f"{base}_{i}"
        taken.add(name)
        return name

    for t in graph.initializer:
        uses = consumers.get(t.name, [])
        count = int(np.prod(t.dims)) if len(t.dims) else 1
        if (
            t.data_type != TensorProto.FLOAT
            or count < min_elements
            or not uses
            or t.name in outputs
            or t.name in inputs
            or any(n is None for n, _ in uses)
        ):
            keep.append(t)
            continue
        w = numpy_helper.to_array(t).astype(np.float32)
        if int8_gather and w.ndim == 2 and all(n.op_type == "Gather" and i == 0 and _axis(n) == 0 for n, i in uses):
            q, scale = _int8(w, axis=0)
            qn, sn = fresh(f"{t.name}_int8"), fresh(f"{t.name}_scale")
            new_inits += [numpy_helper.from_array(q, qn), numpy_helper.from_array(scale.astype(np.float32), sn)]
            gather_rewrites += [(n, qn, sn) for n, _ in uses]
            done["int8_gather"] += 1
            continue
        axis = _channel_axis(w, uses) if int8_weights else None
        if axis is not None:
            q, scale = _int8(w, axis=axis)
            qn, sn, cn = fresh(f"{t.name}_int8"), fresh(f"{t.name}_scale"), fresh(f"{t.name}_int8_f32")
            new_inits += [numpy_helper.from_array(q, qn), numpy_helper.from_array(scale.astype(np.float32), sn)]
            pre_nodes += [
                helper.make_node("Cast", [qn], [cn], to=TensorProto.FLOAT, name=fresh(f"{t.name}_dequant_cast")),
                helper.make_node("Mul", [cn, sn], [t.name], name=fresh(f"{t.name}_dequant_mul")),
            ]
            done["int8_weight"] += 1
            continue
        if not np.isfinite(w).all() or np.abs(w).max() > FP16_MAX:
            keep.append(t)
            done["kept_fp32"] += 1
            continue
        hn = fresh(f"{t.name}_fp16")
        new_inits.append(numpy_helper.from_array(w.astype(np.float16), hn))
        pre_nodes.append(helper.make_node("Cast", [hn], [t.name], to=TensorProto.FLOAT, name=fresh(f"{t.name}_cast")))
        done["fp16"] += 1

    nodes = list(graph.node)
    for node, qn, sn in gather_rewrites:
        out = node.output[0]
        idx = node.input[1]
        qo, fo, so = fresh(f"{out}_int8"), fresh(f"{out}_f32"), fresh(f"{out}_scale")
        repl = [
            helper.make_node("Gather", [qn, idx], [qo], axis=0, name=fresh(f"{node.name or out}_int8")),
            helper.make_node("Cast", [qo], [fo], to=TensorProto.FLOAT, name=fresh(f"{node.name or out}_cast")),
            helper.make_node("Gather", [sn, idx], [so], axis=0, name=fresh(f"{node.name or out}_scale")),
            helper.make_node("Mul", [fo, so], [out], name=fresh(f"{node.name or out}_dequant")),
        ]
        at = next(k for k, n in enumerate(nodes) if n is node)
        nodes[at : at + 1] = repl
    del graph.initializer[:]
    graph.initializer.extend(keep + new_inits)
    del graph.node[:]
    graph.node.extend(pre_nodes + nodes)  # dequantizing nodes first: the graph stays topologically sorted
    return done


def _int8(w, axis: int):
    """Symmetric int8 with one scale per slice along `axis` (scales shaped to broadcast back)."""
    import numpy as np

    red = tuple(d for d in range(w.ndim) if d != axis)
    amax = np.abs(w).max(axis=red, keepdims=True) if red else np.abs(w)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


def _axis(node) -> int:
    return next((a.i for a in node.attribute if a.name == "axis"), 0)


def _channel_axis(w, uses):
    """The output-channel axis of a Conv/MatMul/Gemm weight (every reader must agree), else None."""
    axes = set()
    for node, i in uses:
        attrs = {a.name: a.i for a in node.attribute}
        if node.op_type in ("Conv", "ConvTranspose") and i == 1 and w.ndim >= 3:
            axes.add(0 if node.op_type == "Conv" else 1)
        elif node.op_type == "MatMul" and i == 1 and w.ndim == 2:
            axes.add(1)
        elif node.op_type == "Gemm" and i == 1 and w.ndim == 2:
            axes.add(0 if attrs.get("transB", 0) else 1)
        else:
            return None
    return axes.pop() if len(axes) == 1 else None


def _constants_to_initializers(graph, min_elements: int) -> None:
    """Big fp32 Constant nodes of the main graph become initializers (same name), so they are compacted too."""
    import numpy as np
    from onnx import TensorProto

    nodes = []
    for node in graph.node:
        t = (
            next((a.t for a in node.attribute if a.name == "value" and a.HasField("t")), None)
            if node.op_type == "Constant"
            else None
        )
        if (
            t is not None
            and t.data_type == TensorProto.FLOAT
            and len(node.attribute) == 1
            and (int(np.prod(t.dims)) if len(t.dims) else 1) >= min_elements
        ):
            init = graph.initializer.add()
            init.CopyFrom(t)
            init.name = node.output[0]
            continue
        nodes.append(node)
    if len(nodes) != len(graph.node):
        del graph.node[:]
        graph.node.extend(nodes)


def _subgraph_inputs(graph) -> set:
    """Names read by nodes inside the main graph's subgraphs (If/Loop/Scan bodies)."""
    names = set()
    for node in graph.node:
        for a in node.attribute:
            for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                for n in g.node:
                    names.update(n.input)
                names |= _subgraph_inputs(g)
    return names
