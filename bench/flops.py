"""How much arithmetic a UNet step is, and how much this machine can do: the denominator of "fraction of peak".

Why two counts: a FLOP figure is only worth reporting if it is reproducible, so the UNet is counted
once by PyTorch's own FlopCounterMode on the diffusers model and once from the exported ONNX graph
(Conv, ConvTranspose, MatMul, Gemm with shapes from onnx shape inference). Both count a multiply-add
as 2 FLOPs and ignore bias adds, normalisation and activations; they should agree closely.
"""

from __future__ import annotations

import math
import subprocess
import time
from pathlib import Path

COUNTED_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def _dims(type_proto) -> list | None:
    if not type_proto.HasField("tensor_type") or not type_proto.tensor_type.HasField("shape"):
        return None
    out = []
    for d in type_proto.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            out.append(d.dim_value)
        else:
            return None  # symbolic or unknown
    return out


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            import onnx

            return onnx.helper.get_attribute_value(a)
    return default


def onnx_flops(model_path, input_shapes: dict[str, list[int]]) -> dict:
    """FLOPs of one run of an ONNX model with the given concrete input shapes.

    Weights are not loaded (external data stays on disk): shapes come from initializer dims and
    shape inference with data propagation. Returns total, per op type, and any node whose shapes
    could not be inferred (`unresolved`, so a caller can refuse a partial count).
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    init_names = {t.name for t in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name in init_names:
            continue
        if inp.name not in input_shapes:
            raise ValueError(f"{Path(model_path).name}: no shape given for input {inp.name!r}")
        shape = inp.type.tensor_type.shape
        want = list(input_shapes[inp.name])
        while len(shape.dim) > len(want):
            shape.dim.pop()
        for i, v in enumerate(want):
            if i < len(shape.dim):
                shape.dim[i].Clear()
                shape.dim[i].dim_value = int(v)
            else:
                shape.dim.add().dim_value = int(v)
    model, method = _infer_shapes(model)
    g = model.graph
    shapes: dict[str, list[int]] = {t.name: list(t.dims) for t in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        d = _dims(vi.type)
        if d is not None:
            shapes.setdefault(vi.name, d)
    for node in g.node:
        if node.op_type == "Constant":
            t = _attr(node, "value")
            if t is not None and hasattr(t, "dims"):
                shapes[node.output[0]] = list(t.dims)

    by_op = {op: 0 for op in COUNTED_OPS}
    nodes = {op: 0 for op in COUNTED_OPS}
    unresolved = []
    for node in g.node:
        if node.op_type not in COUNTED_OPS:
            continue
        ins = [shapes.get(n) for n in node.input[:2]]
        out = shapes.get(node.output[0])
        if any(s is None for s in ins) or out is None:
            unresolved.append(node.name or node.op_type)
            continue
        a, b = ins
        if node.op_type == "Conv":
            # weight [Cout, Cin/group, k...]: each output element is Cin/group·Πk multiply-adds
            flops = 2 * math.prod(out) * math.prod(b[1:])
        elif node.op_type == "ConvTranspose":
            # weight [Cin, Cout/group, k...]: each input element scatters Cout/group·Πk multiply-adds
            flops = 2 * math.prod(a) * math.prod(b[1:])
        elif node.op_type == "MatMul":
            k = a[-1] if len(a) >= 1 else 1
            flops = 2 * math.prod(out) * k
        else:  # Gemm: A [M,K] (or transposed) @ B
            k = a[0] if _attr(node, "transA", 0) else a[-1]
            flops = 2 * math.prod(out) * k
        by_op[node.op_type] += flops
        nodes[node.op_type] += 1
    return {"total": sum(by_op.values()), "by_op": by_op, "nodes": nodes, "unresolved": unresolved, "shape_inference": method}


def _infer_shapes(model):
    """onnxruntime's symbolic shape inference (it resolves Reshape targets computed from Shape ops,
    which onnx's own pass leaves unknown in exported attention blocks); onnx's pass if it fails."""
    import onnx

    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        return SymbolicShapeInference.infer_shapes(model, auto_merge=True), "onnxruntime symbolic_shape_infer"
    except Exception:  # noqa: BLE001 - any failure there: fall back to the reference pass
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True), "onnx.shape_inference (data_prop)"


def bundle_flops(bundle_dir) -> dict:
    """ONNX FLOPs of the bundle's text encoder (batch 2), one UNet call (batch 2) and one VAE decode."""
    from runtime.bundle import Bundle

    bundle = Bundle.from_dir(bundle_dir, verify=False)
    m = bundle.model
    root = Path(bundle_dir)
    lat = list(m["latent_size"])
    seq = m.get("text_max_length", 77)
    comps = {
        "text_encoder": {"input_ids": [2, seq]},
        "unet": {
            "sample": [2, m["latent_channels"], *lat],
            "timestep": [],
            "encoder_hidden_states": [2, seq, m["text_hidden_size"]],
        },
        "vae_decoder": {"latent_sample": [1, m["latent_channels"], *lat]},
    }
    out = {}
    for name, feeds in comps.items():
        path = root / bundle.component(name)["files"][0]
        # the UNet's timestep is a scalar in our exports; keep whatever rank the graph declares
        out[name] = onnx_flops(path, _match_ranks(path, feeds))
    return out


def _match_ranks(path, feeds: dict) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    fixed = dict(feeds)
    for inp in model.graph.input:
        if inp.name == "timestep":
            rank = len(inp.type.tensor_type.shape.dim)
            fixed["timestep"] = [1] * rank
    return fixed


def count_all(bundle_dir, checkpoint=None) -> dict:
    """Both UNet counts (ONNX graph; torch when a checkpoint is given) plus the ONNX counts of the other models.

    `unet_per_step` is the figure achieved FLOP/s is computed from: the ONNX count when every counted
    node's shapes were inferred, else the torch count.
    """
    from runtime.bundle import Bundle

    m = Bundle.from_dir(bundle_dir, verify=False).model
    out: dict = {"onnx": bundle_flops(bundle_dir), "notes": []}
    unet = out["onnx"]["unet"]
    out["unet_onnx"] = unet["total"] if not unet["unresolved"] else None
    if unet["unresolved"]:
        out["notes"].append(f"ONNX count incomplete: shapes of {len(unet['unresolved'])} UNet nodes not inferred")
    out["unet_torch"] = None
    if checkpoint:
        out["torch_unet"] = torch_unet_flops(checkpoint, m["latent_size"], m.get("text_max_length", 77))
        out["unet_torch"] = out["torch_unet"]["total"]
    out["unet_per_step"] = out["unet_onnx"] or out["unet_torch"]
    return out


def torch_unet_flops(checkpoint, latent_size, text_max_length: int = 77, batch: int = 2) -> dict:
    """FLOPs of one diffusers UNet forward at `batch` (2 = classifier-free guidance), by FlopCounterMode.

    Attention is forced to PyTorch's math kernel while counting: the CPU flash-attention kernel has no
    FLOP formula in torch.utils.flop_counter and would be silently counted as zero.
    """
    import torch
    from diffusers import UNet2DConditionModel
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    unet = UNet2DConditionModel.from_pretrained(checkpoint, subfolder="unet").eval()
    cfg = unet.config
    h, w = latent_size
    sample = torch.zeros(batch, cfg.in_channels, h, w)
    states = torch.zeros(batch, text_max_length, cfg.cross_attention_dim)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        unet(sample, torch.tensor(500.0), states)
    by_op = {str(k).removeprefix("aten."): int(v) for k, v in counter.get_flop_counts()["Global"].items()}
    return {"total": int(counter.get_total_flops()), "by_op": by_op}


def matmul_peak(threads: int, n: int = 2048, seconds: float = 2.0) -> dict:
    """Best sustained fp32 matmul rate (FLOP/s) of this machine with `threads` threads, by torch and numpy.

    Meant to run in a fresh process whose OMP/OpenBLAS/MKL thread variables were set to `threads`
    (bench.main does this); the rate is the best of repeated n×n products after one warm-up, which is
    what "peak" means here: the most a well-tuned GEMM reaches on this machine right now.
    """
    out = {"threads": threads, "n": n, "flop_per_matmul": 2 * n**3}
    flop = 2 * n**3
    try:
        import torch

        torch.set_num_threads(threads)
        a, b = torch.randn(n, n), torch.randn(n, n)
        out["torch"] = _best_rate(lambda: torch.mm(a, b), flop, seconds)
    except ImportError:
        pass
    import numpy as np

    try:
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(threads)
    except ImportError:
        limiter = None
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out["numpy"] = _best_rate(lambda: a @ b, flop, seconds)
    if limiter is not None:
        limiter.restore_original_limits()
    try:
        out["onnxruntime"] = _ort_matmul_rate(threads, n, seconds)
    except ImportError:
        pass
    out["peak"] = max(out.get("torch", 0.0), out["numpy"], out.get("onnxruntime", 0.0))
    try:  # not part of the peak: the page's own ceiling, beside it
        out["onnxruntime_web_wasm"] = _wasm_matmul_rate(threads, n, seconds)
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
        out["onnxruntime_web_wasm_error"] = str(e).splitlines()[0] if str(e) else type(e).__name__
    return out


def _matmul_model(n: int):
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["y"])],
        "matmul",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [n, n])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 10)
    return model


def _wasm_matmul_rate(threads: int, n: int, seconds: float) -> float:
    """The same product in onnxruntime-web's WASM build (bench/wasm_peak.mjs, Node): what limits the
    page's UNet, since WASM has 128-bit SIMD and no fused multiply-add where native MLAS has AVX-512 FMA."""
    import shutil
    import tempfile

    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "matmul.onnx"
        path.write_bytes(_matmul_model(n).SerializeToString())
        script = Path(__file__).with_name("wasm_peak.mjs")
        r = subprocess.run(
            [node, str(script), str(path), str(n), str(threads), str(seconds)],
            capture_output=True,
            text=True,
            timeout=120 + 10 * seconds,
        )
    if r.returncode != 0:
        raise RuntimeError((r.stderr.strip().splitlines() or ["node failed"])[-1][:200])
    return float(r.stdout.strip().splitlines()[-1])


def _ort_matmul_rate(threads: int, n: int, seconds: float) -> float:
    """The same product through onnxruntime's own GEMM (MLAS): the ceiling the native and WASM runs share."""
    import numpy as np
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(_matmul_model(n).SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    feeds = {"a": rng.standard_normal((n, n), dtype=np.float32), "b": rng.standard_normal((n, n), dtype=np.float32)}
    return _best_rate(lambda: sess.run(None, feeds), 2 * n**3, seconds)


def _best_rate(fn, flop: int, seconds: float) -> float:
    fn()  # warm-up: thread pools, page faults, kernel selection
    best = math.inf
    t_end = time.perf_counter() + seconds
    runs = 0
    while runs < 3 or time.perf_counter() < t_end:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
        runs += 1
    return flop / best
