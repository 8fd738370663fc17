"""The page's default `small` build: compact weight storage (int8 / fp16 stored, fp32 computed).

What is checked: the storage precisions give the fp32 graph back once onnxruntime has folded the
dequantizing Cast/Mul nodes (so speed is unchanged), the derived build's quality report (every
component, optional ones included; the judge asked for ≥ 4 seeds), `serve`'s default is the small
build, and in Chromium onnxruntime-web (WASM, and WebGPU on SwiftShader) loads the Gather/Cast/Mul
patterns and draws the native runtime's image (≤ 2/255). The real default model's build,
bundles/default-small (derived once per test session as `serve` derives it: tests/conftest.py), too.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from export.exporter import ExportError, export_bundle, resolve_precision  # noqa: E402
from export.quantize import DEFAULTS, OPTIONAL_COMPONENTS, compact_weights  # noqa: E402
from runtime.bundle import MODEL_COMPONENTS, Bundle, sha256_file  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SMALL_LIMIT = 25_000_000


def _toy_model():
    """Every kind of weight the rewrite treats: a Gather table, Conv, MatMul, Gemm (transB), a big
    Constant node, a small bias, and a weight fp16 cannot hold."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = lambda *s: rng.standard_normal(s).astype(np.float32) * 0.2  # noqa: E731
    inits = [
        numpy_helper.from_array(w(300, 16), "table"),
        numpy_helper.from_array(w(16, 3, 3, 3), "conv_w"),
        numpy_helper.from_array(w(16, 32), "mm_w"),
        numpy_helper.from_array(w(16, 32), "gemm_w"),
        numpy_helper.from_array(w(16), "conv_b"),
        numpy_helper.from_array(np.full((8, 32), 1e6, np.float32), "huge"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
    ]
    const = helper.make_node("Constant", [], ["const_w"], value=numpy_helper.from_array(w(32, 16), "const_w"))
    nodes = [
        const,
        helper.make_node("Gather", ["table", "ids"], ["emb"], axis=0),  # [B, 16]
        helper.make_node("MatMul", ["emb", "mm_w"], ["h1"]),  # [B, 32]
        helper.make_node("Gemm", ["h1", "gemm_w"], ["h2"], transB=1),  # [B, 16]
        helper.make_node("MatMul", ["h1", "const_w"], ["h3"]),
        helper.make_node("Unsqueeze", ["h1", "axis1"], ["h1u"]),
        helper.make_node("Add", ["h1u", "huge"], ["h4"]),
        helper.make_node("Add", ["h2", "h3"], ["text_out"]),
        helper.make_node("Conv", ["img", "conv_w", "conv_b"], ["image_out"], pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes,
        "toy",
        [
            helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch"]),
            helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 3, 8, 8]),
        ],
        [
            helper.make_tensor_value_info("text_out", TensorProto.FLOAT, ["batch", 16]),
            helper.make_tensor_value_info("image_out", TensorProto.FLOAT, ["batch", 16, 8, 8]),
            helper.make_tensor_value_info("h4", TensorProto.FLOAT, ["batch", 8, 32]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])


def _run(model, feeds, optimized: Path | None = None, level=None):
    so = ort.SessionOptions()
    if level is not None:
        so.graph_optimization_level = level
    if optimized:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


FEEDS = {"ids": np.array([0, 7, 299], np.int64), "img": np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)}


@pytest.mark.parametrize("precision", ["fp16w", "int8w", "int8w-all"])
def test_compact_storage_folds_back_to_the_fp32_graph(precision, tmp_path):
    ref = _run(_toy_model(), FEEDS)
    model = _toy_model()
    done = compact_weights(model, int8_gather=precision != "fp16w", int8_weights=precision == "int8w-all")
    stored = {t.name: t.data_type for t in model.graph.initializer}
    T = onnx.TensorProto
    assert stored["huge"] == T.FLOAT and done["kept_fp32"] == 1  # beyond float16: stays fp32
    assert stored["conv_b"] == T.FLOAT  # tiny: not worth it
    if precision == "fp16w":
        assert stored["table_fp16"] == T.FLOAT16 and stored["mm_w_fp16"] == T.FLOAT16 and stored["const_w_fp16"] == T.FLOAT16
    else:
        assert stored["table_int8"] == T.INT8 and stored["table_scale"] == T.FLOAT and done["int8_gather"] == 1
    if precision == "int8w-all":
        assert {stored[f"{n}_int8"] for n in ("conv_w", "mm_w", "gemm_w", "const_w")} == {T.INT8}
        assert [d for d in next(t for t in model.graph.initializer if t.name == "gemm_w_scale").dims] == [
            16,
            1,
        ]  # transB: per row
    elif precision == "int8w":
        assert stored["mm_w_fp16"] == stored["gemm_w_fp16"] == T.FLOAT16
    assert not any(n.op_type == "Constant" and n.output[0] == "const_w" for n in model.graph.node)
    tol = {"fp16w": 2e-3, "int8w": 2e-2, "int8w-all": 5e-2}[precision]
    got = _run(model, FEEDS, optimized=tmp_path / "opt.onnx", level=ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    for g, r in zip(got, ref):
        assert np.abs(g - r).max() <= tol * max(1.0, np.abs(r).max())
    # onnxruntime folded every dequantizing Cast/Mul of a stored weight at session creation: the
    # session computes on fp32 weights; only the Gather table stays int8, dequantized per looked-up row
    opt = onnx.load(str(tmp_path / "opt.onnx"))
    inits = {t.name: t.data_type for t in opt.graph.initializer}
    assert set(inits.values()) <= {T.FLOAT, T.INT8, T.INT64}
    assert [n for n, d in inits.items() if d == T.INT8] == (["table_int8"] if precision != "fp16w" else [])
    casts = [n for n in opt.graph.node if n.op_type == "Cast"]
    assert len(casts) == (0 if precision == "fp16w" else 1)  # the int8 rows looked up, per run


def test_freezing_sizes_folds_shape_arithmetic_and_keeps_stored_weights():
    """export/freeze.py on a torch-style graph (Shape → Gather → Concat → Reshape, a filled bias, int8
    weights behind DequantizeLinear): same outputs, the shape nodes gone, the weights still int8 in
    the file, the filled tensor stored as ConstantOfShape, the sizes fixed on the inputs and outputs."""
    from onnx import TensorProto, helper, numpy_helper

    from export.freeze import fixed_sizes, freeze_shapes

    rng = np.random.default_rng(0)
    q = rng.integers(-127, 128, (64, 64)).astype(np.int8)
    inits = [
        numpy_helper.from_array(q, "w_q"),
        numpy_helper.from_array(np.float32(0.01), "w_scale"),
        numpy_helper.from_array(np.array([0], np.int64), "i0"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
        numpy_helper.from_array(np.array([64, 64], np.int64), "bias_shape"),
    ]
    nodes = [
        helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"]),
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "i0"], ["b"], axis=0),
        helper.make_node("Concat", ["b", "minus1"], ["flat"], axis=0),
        helper.make_node("Reshape", ["x", "flat"], ["x2"]),  # [batch, 64]
        helper.make_node("MatMul", ["x2", "w"], ["y0"]),
        helper.make_node(
            "ConstantOfShape", ["bias_shape"], ["zeros"], value=numpy_helper.from_array(np.array([0.0], np.float32))
        ),
        helper.make_node("MatMul", ["y0", "zeros"], ["y1"]),
        helper.make_node("Add", ["y0", "y1"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "torchy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 64])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    feeds = {"x": rng.standard_normal((2, 4, 4, 4)).astype(np.float32)}
    dims = fixed_sizes(model, feeds)
    assert dims == {"batch": 2}
    want = _run(model, feeds)[0]
    frozen = freeze_shapes(onnx.load_from_string(model.SerializeToString()), dims)
    np.testing.assert_allclose(_run(frozen, feeds)[0], want, atol=1e-6)
    ops = [n.op_type for n in frozen.graph.node]
    assert "Shape" not in ops and "Concat" not in ops and "ConstantOfShape" in ops
    assert [t.name for t in frozen.graph.initializer if t.data_type == TensorProto.INT8] == ["w_q"]
    assert all(t.data_type != TensorProto.FLOAT or np.prod(t.dims) < 64 * 64 for t in frozen.graph.initializer)
    assert len(frozen.SerializeToString()) < len(model.SerializeToString()) + 1024
    assert [d.dim_value for d in frozen.graph.input[0].type.tensor_type.shape.dim] == [2, 4, 4, 4]
    assert [d.dim_value for d in frozen.graph.output[0].type.tensor_type.shape.dim] == [2, 64]


def test_precision_names_and_targets():
    assert resolve_precision("small") == DEFAULTS["small"]
    assert set(resolve_precision("fp16w")) == set(MODEL_COMPONENTS + OPTIONAL_COMPONENTS)  # storage: optional ones too
    assert set(resolve_precision("fp16")) == set(MODEL_COMPONENTS)  # fp16 compute: optional ones stay fp32
    assert resolve_precision({"clip_image": "int8w-all"})["clip_image"] == "int8w-all"
    with pytest.raises(ExportError, match="unknown component"):
        resolve_precision({"unett": "fp16w"})
    with pytest.raises(ExportError, match="unknown precision"):
        resolve_precision("int8x")


@pytest.fixture(scope="module")
def small_tiny(tiny_bundle, tmp_path_factory):
    """The tiny bundle with a toy optional component (clip_image), and its `small` build, judged."""
    src = tmp_path_factory.mktemp("small") / "fp32"
    shutil.copytree(tiny_bundle, src)
    onnx.save(_toy_model(), str(src / "clip_image.onnx"))
    manifest = json.loads((src / "manifest.json").read_text())
    from export.manifest import io_specs

    inputs, outputs = io_specs(onnx.load(str(src / "clip_image.onnx")))
    manifest["components"]["clip_image"] = {
        "files": ["clip_image.onnx"],
        "precision": "fp32",
        "inputs": inputs,
        "outputs": outputs,
    }
    manifest["files"]["clip_image.onnx"] = {
        "bytes": (src / "clip_image.onnx").stat().st_size,
        "sha256": sha256_file(src / "clip_image.onnx"),
    }
    (src / "manifest.json").write_text(json.dumps(manifest, indent=1))
    calls = []

    def judge(manifest, bundle_dir, seeds=(0, 1)):
        calls.append(tuple(seeds))
        small = manifest["components"]["unet"]["precision"] != "fp32"
        return {"object_accuracy": 0.5 - 0.0025 * small, "background_accuracy": 1.0, "prompts": 1, "seeds": list(seeds)}

    out = src.with_name("small")
    m = export_bundle(src, out, precision="small", quality=(1, 3), judge=judge)
    return src, out, m, calls


def test_the_text_encoders_window_is_fixed_but_any_batch_runs(small_tiny):
    """CLIP scores any number of prompts through the text encoder: its batch stays free; the outputs match fp32."""
    import numpy as np
    import onnxruntime as ort

    src, out, m, _ = small_tiny
    width = m["tokenizer"]["max_length"]
    rel = m["components"]["text_encoder"]["files"][0]
    fp32, small = (ort.InferenceSession(str(d / rel), providers=["CPUExecutionProvider"]) for d in (src, out))
    for batch in (1, 2, 3):
        ids = np.random.default_rng(batch).integers(0, 400, (batch, width)).astype(np.int64)
        a, b = (s.run(["last_hidden_state"], {"input_ids": ids})[0] for s in (fp32, small))
        assert a.shape == b.shape == (batch, width, a.shape[-1])
        assert np.abs(a - b).max() <= 0.05 * max(1.0, np.abs(a).max())


def test_small_build_of_every_component_with_its_report(small_tiny):
    src, out, m, calls = small_tiny
    q = m["quality"]
    assert set(q["components"]) == set(MODEL_COMPONENTS) | {"clip_image"}  # the bundle has no umap_project
    for comp, r in q["components"].items():
        assert r["precision"] == DEFAULTS["small"][comp] == m["components"][comp]["precision"]
        assert r["bytes"] < r["bytes_fp32"] and r["max_abs_error_vs_fp32"] <= 0.05 * max(1.0, r["max_abs_fp32"])
    assert q["components"]["text_encoder"]["bytes"] < 0.4 * q["components"]["text_encoder"]["bytes_fp32"]  # the int8 token table
    # the UNet at the one size the runtime calls it: batch 2 (guidance), the latent size, the tokenizer's window
    unet = q["components"]["unet"]
    h, w = m["model"]["latent_size"]
    assert unet["fixed_sizes"] == {"batch_size": 2, "height": h, "width": w, "sequence_length": m["tokenizer"]["max_length"]}
    assert unet["nodes"]["after"] < unet["nodes"]["before"]
    assert m["components"]["unet"]["inputs"][0]["shape"] == [2, 4, h, w]
    assert q["components"]["vae_decoder"]["fixed_sizes"] == {"batch_size": 1, "latent_height": h, "latent_width": w}
    # the text encoder at the tokenizer's window; its batch stays the number of prompts (CLIP scores any number)
    text = q["components"]["text_encoder"]
    assert text["fixed_sizes"] == {"sequence_length": m["tokenizer"]["max_length"]}
    assert text["nodes"]["after"] < text["nodes"]["before"]
    assert m["components"]["text_encoder"]["inputs"][0]["shape"] == ["batch_size", m["tokenizer"]["max_length"]]
    assert q["bundle_bytes"]["this build"] < 0.5 * q["bundle_bytes"]["fp32"]
    assert q["image"]["psnr_db_vs_fp32"]["min"] > 25
    # the judge is asked for four seeds per prompt, for both builds
    assert calls == [(0, 1, 2, 3)] * 2 and q["adherence"]["this build"]["seeds"] == [0, 1, 2, 3]
    assert q["adherence"]["points_vs_fp32"] == {"object": -0.25, "background": 0.0}
    b = Bundle.from_dir(out, verify=True)  # hashes of the new files are right
    assert b.component("text_encoder")["precision"] == "int8w"
    te = onnx.load(str(out / "text_encoder.onnx"))
    assert any(t.data_type == onnx.TensorProto.INT8 and list(t.dims) == [49408, 32] for t in te.graph.initializer)
    with pytest.raises(ExportError, match="derive builds from an fp32 bundle"):
        export_bundle(out, out.with_name("again"), precision="fp16w")


def test_a_judge_without_seeds_still_works(tiny_bundle, tmp_path):
    seen = []

    def old_judge(manifest, bundle_dir):
        seen.append(bundle_dir)
        return {"object_accuracy": 1.0, "background_accuracy": 1.0, "prompts": 1, "seeds": [0, 1]}

    m = export_bundle(tiny_bundle, tmp_path / "w", precision="fp16w", quality=(1, 2), judge=old_judge)
    assert len(seen) == 2 and m["quality"]["adherence"]["points_vs_fp32"]["object"] == 0.0
    assert all(c["precision"] == "fp16w" for c in m["quality"]["components"].values())


def test_serve_defaults_to_the_small_build(small_tiny, tmp_path, monkeypatch):
    from app import serve

    src, _, _, _ = small_tiny
    fp32 = tmp_path / "bundles" / "default"
    shutil.copytree(src, fp32)
    monkeypatch.setattr(serve, "DEFAULT_BUNDLE", fp32)
    monkeypatch.setattr(serve, "DEFAULT_MODEL", tmp_path / "no-model")  # nothing to re-export from
    logs = []
    got = serve.default_bundle(log=logs.append)
    assert got == fp32.with_name("default-small") and "first use" in logs[0]
    assert len(logs) == 2 and logs[1].startswith("  quantize and measure quality (")  # one line per stage
    man = json.loads((got / "manifest.json").read_text())
    assert {c: v["precision"] for c, v in man["components"].items() if c in DEFAULTS["small"]} == {
        c: p for c, p in DEFAULTS["small"].items() if c != "umap_project"
    }  # the tiny bundle has no UMAP
    before = (got / "unet.onnx").stat().st_mtime_ns
    n = len(logs)
    assert serve.default_bundle(log=logs.append) == got and len(logs) == n  # up to date: reused
    assert (got / "unet.onnx").stat().st_mtime_ns == before
    m = json.loads((fp32 / "manifest.json").read_text())  # a re-exported fp32 bundle: derived again
    m["created"] = "2000-01-01T00:00:00+00:00"
    (fp32 / "manifest.json").write_text(json.dumps(m))
    assert serve.default_bundle(log=logs.append) == got and "deriving it again" in logs[n]


def test_the_default_small_bundle_figures(default_small_bundle):
    """The page's default build of the real default model: ≤ 25 MB, and, when its report has the judge,
    object and background accuracy no more than one point below fp32's (48 held-out prompts × ≥ 4
    seeds, guidance 7.5). One-sided: a point is two images of 192, and flips go both ways."""
    m = json.loads((default_small_bundle / "manifest.json").read_text())
    total = sum(f["bytes"] for f in m["files"].values())
    assert total <= SMALL_LIMIT, f"{total / 1e6:.1f} MB"
    q = m["quality"]
    for comp in ("clip_image", "umap_project"):
        if comp in m["components"]:
            assert "max_abs_error_vs_fp32" in q["components"][comp]
    assert q["image"]["psnr_db_vs_fp32"]["min"] > 25
    adh = q.get("adherence")
    if adh:
        assert len(adh["this build"]["seeds"]) >= 4 and adh["this build"]["guidance"] == 7.5
        assert all(v >= -1.0 for v in adh["points_vs_fp32"].values()), adh["points_vs_fp32"]


# ---- in Chromium: onnxruntime-web loads the small build and draws the native image ------------------


@pytest.fixture(scope="module")
def small_server(web_dist, small_tiny):
    from app.serve import start_background

    srv, url = start_background(small_tiny[1], dist=web_dist)
    yield url
    srv.shutdown()
    srv.server_close()


@pytest.fixture(scope="module")
def chromium():
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS

    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS + ["--enable-unsafe-webgpu"])
        yield b
        b.close()


@pytest.mark.browser
@pytest.mark.parametrize("provider", ["wasm", "webgpu"])
def test_small_build_in_the_browser_equals_native(chromium, small_server, small_tiny, provider):
    from tests.test_browser import PROMPT, Page, assert_same_image, native

    out = small_tiny[1]
    page = Page(chromium, small_server)
    try:
        page.open(f"?provider={provider}&threads=1")
        assert page.page.get_attribute("[data-testid=provider]", "data-provider") == provider
        steps = 4 if provider == "wasm" else 2
        got = page.generate(prompt=PROMPT, negative="", seed=5, guidance=7.5, steps=steps, scheduler="euler")
        want, _ = native(out, prompt=PROMPT, negative_prompt="", seed=5, guidance=7.5, steps=steps, scheduler="euler")
        assert_same_image(got, want)
        info = page.page.evaluate("() => window.__engineInfo.bundle.precision")
        assert {"int8w", "int8w-all", "fp16w"} <= set(info)
        page.assert_all_local()
    finally:
        page.close()


@pytest.mark.browser
def test_default_small_bundle_in_the_browser_equals_native(chromium, web_dist, default_small_bundle):
    """The real default model's small build in onnxruntime-web (WASM): the native image, ≤ 2/255."""
    from app.serve import start_background
    from tests.test_browser import Page, assert_same_image, native

    srv, url = start_background(default_small_bundle, dist=web_dist)
    page = Page(chromium, url)
    try:
        page.open("?provider=wasm&threads=2")
        for prompt, seed in (("a red apple on a blue background", 3), ("a cat at night", 7)):
            got = page.generate(prompt=prompt, negative="", seed=seed, guidance=7.5, steps=8, scheduler="euler")
            want, _ = native(
                default_small_bundle, prompt=prompt, negative_prompt="", seed=seed, guidance=7.5, steps=8, scheduler="euler"
            )
            assert_same_image(got, want)
        page.assert_all_local()
    finally:
        page.close()
        srv.shutdown()
        srv.server_close()
