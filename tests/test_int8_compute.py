"""The int8c precision (export/quantize.py): integer kernels for Conv/MatMul/Gemm, the chosen layers
kept fp32, the uint8 weights surviving export/freeze.py's folding, and the default UNet's error vs fp32."""

from __future__ import annotations

from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxruntime.quantization")

from export.freeze import freeze_file, freeze_shapes  # noqa: E402
from export.quantize import INT8C_KEEP_FP32, int8_compute, quantize  # noqa: E402

INTEGER_OPS = {"MatMulInteger", "ConvInteger", "QLinearMatMul", "QLinearConv", "DynamicQuantizeMatMul"}


def _ops(model) -> dict:
    out = {}
    for n in model.graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def _weights_of(model, node_name_part: str, op_types=("Conv", "Gemm", "MatMul")):
    """(op_type, weight dtype) of the nodes whose name holds node_name_part."""
    inits = {t.name: t for t in model.graph.initializer}
    return [
        (n.op_type, inits[n.input[1]].data_type)
        for n in model.graph.node
        if node_name_part in n.name and n.op_type in op_types and n.input[1] in inits
    ]


def _toy_unet(path: Path) -> None:
    """A UNet-shaped toy with the names int8c looks for: conv_in, a middle Conv and MatMul, a time
    embedding Gemm, conv_out; sizes symbolic (batch) as an export leaves them."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = lambda *s: (rng.standard_normal(s) * 0.2).astype(np.float32)  # noqa: E731
    inits = [
        numpy_helper.from_array(w(16, 4, 3, 3), "conv_in.weight"),
        numpy_helper.from_array(w(16, 16, 3, 3), "mid.conv.weight"),
        numpy_helper.from_array(w(16, 16), "mid.to_q.weight"),
        numpy_helper.from_array(w(16, 8), "time.weight"),
        numpy_helper.from_array(w(4, 16, 3, 3), "conv_out.weight"),
        numpy_helper.from_array(np.array([0, 2, 3, 1], np.int64), "perm_shape"),
    ]
    nodes = [
        helper.make_node("Conv", ["sample", "conv_in.weight"], ["h0"], pads=[1] * 4, name="/unet/conv_in/Conv"),
        helper.make_node("Gemm", ["temb", "time.weight"], ["t1"], transB=1, name="/unet/time_embedding/linear_1/Gemm"),
        helper.make_node("Unsqueeze", ["t1", "axes23"], ["t2"], name="/unet/unsq"),
        helper.make_node("Add", ["h0", "t2"], ["h1"], name="/unet/add"),
        helper.make_node("Conv", ["h1", "mid.conv.weight"], ["h2"], pads=[1] * 4, name="/unet/mid/conv1/Conv"),
        helper.make_node("Transpose", ["h2"], ["h3"], perm=[0, 2, 3, 1], name="/unet/mid/t"),
        helper.make_node("MatMul", ["h3", "mid.to_q.weight"], ["h4"], name="/unet/mid/attn1/to_q/MatMul"),
        helper.make_node("Transpose", ["h4"], ["h5"], perm=[0, 3, 1, 2], name="/unet/mid/t2"),
        helper.make_node("Conv", ["h5", "conv_out.weight"], ["out_sample"], pads=[1] * 4, name="/unet/conv_out/Conv"),
    ]
    inits.append(numpy_helper.from_array(np.array([2, 3], np.int64), "axes23"))
    graph = helper.make_graph(
        nodes,
        "toy_unet",
        [
            helper.make_tensor_value_info("sample", TensorProto.FLOAT, ["batch", 4, 8, 8]),
            helper.make_tensor_value_info("temb", TensorProto.FLOAT, ["batch", 8]),
        ],
        [helper.make_tensor_value_info("out_sample", TensorProto.FLOAT, ["batch", 4, 8, 8])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _run(path_or_model, feeds: dict) -> np.ndarray:
    src = path_or_model.SerializeToString() if hasattr(path_or_model, "SerializeToString") else str(path_or_model)
    return ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def test_int8c_on_a_toy_unet_keeps_the_named_layers_fp32_and_survives_freezing(tmp_path):
    src, dst = tmp_path / "toy.onnx", tmp_path / "out" / "toy.onnx"
    dst.parent.mkdir()
    _toy_unet(src)
    rels = quantize(src, dst, "int8c")
    model = onnx.load(str(dst))
    ops = _ops(model)
    assert ops.get("ConvInteger") == 1 and ops.get("MatMulInteger") == 1, ops  # the middle Conv and MatMul only
    assert ops.get("DynamicQuantizeLinear"), ops
    f32 = onnx.TensorProto.FLOAT
    assert _weights_of(model, "/conv_in/") == [("Conv", f32)]
    assert _weights_of(model, "/conv_out/") == [("Conv", f32)]
    assert [d for _, d in _weights_of(model, "/time_embedding/")] == [f32]  # Gemm (or MatMul + Add) in fp32

    feeds = {
        "sample": np.random.default_rng(1).standard_normal((2, 4, 8, 8), dtype=np.float32),
        "temb": np.random.default_rng(2).standard_normal((2, 8), dtype=np.float32),
    }
    ref, got = _run(src, feeds), _run(dst, feeds)
    rel = float(np.sqrt(np.mean((got - ref) ** 2)) / np.sqrt(np.mean(ref**2)))
    assert 0 < rel < 0.05, rel  # quantized (not the fp32 graph back), and close

    # export/freeze.py: sizes fixed, shape arithmetic folded, the uint8 weights stay uint8 (not folded to fp32)
    uint8_before = sorted(t.name for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8 and len(t.dims))
    frozen = freeze_shapes(onnx.load(str(dst)), {"batch": 2})
    assert _ops(frozen).get("ConvInteger") == 1 and _ops(frozen).get("MatMulInteger") == 1
    uint8_after = sorted(t.name for t in frozen.graph.initializer if t.data_type == onnx.TensorProto.UINT8 and len(t.dims))
    assert uint8_after == uint8_before and len(uint8_after) == 2
    assert not any(
        t.data_type == f32 and list(t.dims) in ([16, 16, 3, 3], [16, 16]) for t in frozen.graph.initializer
    )  # no fp32 copy of the int8 weights
    np.testing.assert_array_equal(_run(frozen, feeds), got)
    assert rels == ["toy.onnx"]


# ---- the default model's UNet ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def default_unet_int8c(default_bundle, tmp_path_factory):
    """bundles/default's UNet as int8c with its sizes fixed, as derive_bundle writes it; and its fp32 twin frozen alike."""
    import json

    from export.verify import random_feeds

    m = json.loads((default_bundle / "manifest.json").read_text())
    facts = {k: m["model"][k] for k in ("latent_size", "text_max_length", "text_hidden_size")}
    feeds = random_feeds(facts, 1000)["unet"]
    out = tmp_path_factory.mktemp("int8c")
    rels = quantize(default_bundle / "unet.onnx", out / "unet.onnx", "int8c")
    rels, report = freeze_file(out, rels, feeds, 1 << 30)
    assert report["fixed_sizes"]["batch_size"] == 2, report
    fp32 = freeze_shapes(onnx.load(str(default_bundle / "unet.onnx")), report["fixed_sizes"])
    return out / rels[0], fp32, feeds, report["fixed_sizes"]


def _relative_errors(model_a, model_b, feeds) -> list[float]:
    """Relative rms error of the UNet's noise prediction, b vs a, at timesteps 50, 500 and 950."""
    sa = ort.InferenceSession(model_a.SerializeToString(), providers=["CPUExecutionProvider"])
    sb = ort.InferenceSession(str(model_b), providers=["CPUExecutionProvider"])
    errs = []
    for t in (50.0, 500.0, 950.0):
        f = {**feeds, "timestep": np.array(t, np.float32)}
        a, b = sa.run(["out_sample"], f)[0], sb.run(["out_sample"], f)[0]
        errs.append(float(np.sqrt(np.mean((b - a) ** 2)) / np.sqrt(np.mean(a**2))))
    return errs


def test_default_unet_int8c_integer_kernels_and_fp32_layers(default_unet_int8c):
    path = default_unet_int8c[0]
    model = onnx.load(str(path))
    ops = _ops(model)
    assert ops.get("ConvInteger", 0) >= 40 and ops.get("MatMulInteger", 0) >= 60, ops  # the default UNet: 47 and 70
    assert INTEGER_OPS & set(ops)
    f32 = onnx.TensorProto.FLOAT
    for part in ("/conv_in/", "/conv_out/", "/time_embedding/", "/time_emb_proj/"):
        kept = _weights_of(model, part)
        assert kept and all(d == f32 for _, d in kept), (part, kept)
    # nothing but the kept layers computes a weight product in fp32 (attention's activation products do)
    inits = {t.name for t in model.graph.initializer}
    fp32_weighted = [
        n.name for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits
    ]
    assert fp32_weighted and all(any(k in name for k in INT8C_KEEP_FP32) for name in fp32_weighted), fp32_weighted
    # the int8 weights are stored as uint8 (QUInt8: onnxruntime-web's int8-weight Conv is a slow path), not folded
    uint8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.UINT8 and np.prod(t.dims) >= 256]
    assert len(uint8) == ops["ConvInteger"] + ops["MatMulInteger"]
    assert not [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8 and np.prod(t.dims) >= 256]


def test_default_unet_int8c_error_vs_fp32(default_unet_int8c, default_bundle, tmp_path):
    """Measured 0.006-0.0095 relative rms on round 4's UNet (as int8w-all's stored-weight rounding), 0.0065-0.0125
    on round 5's; with conv_in and conv_out in int8 too it is over 1.3x that at the same timesteps, so the
    relative check fails if the fp32 layers are lost, whatever the weights."""
    path, fp32, feeds, dims = default_unet_int8c
    errs = _relative_errors(fp32, path, feeds)
    assert all(0 < e < 0.02 for e in errs), errs
    everything = int8_compute(default_bundle / "unet.onnx", keep_fp32=())
    (tmp_path / "all.onnx").write_bytes(freeze_shapes(everything, dims).SerializeToString())
    worse = _relative_errors(fp32, tmp_path / "all.onnx", feeds)
    assert sum(worse) > 1.3 * sum(errs), (worse, errs)
