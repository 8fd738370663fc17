"""The small ONNX graphs that do the pipeline's tensor math.

Why graphs and not Python: the controller is pure Python (it runs in Pyodide, where there is no
numpy), so every element-wise operation — classifier-free guidance, the scheduler's update, x0,
image → bytes — runs in onnxruntime like the models do, on the GPU when the page has one.
All tensors are float32 NCHW with symbolic shapes, so one bundle serves any latent size.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto as T
from onnx import helper as h

OPSET = 18
LINCOMB_TERMS = 8  # the scheduler's updates combine at most this many tensors in one call


def _model(nodes, inputs, outputs, name, doc):
    graph = h.make_graph(nodes, name, inputs, outputs)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="diffusion-explainer")
    model.ir_version = 8
    model.doc_string = doc
    onnx.checker.check_model(model, full_check=True)
    return model


def _latent(name, batch="batch"):
    return h.make_tensor_value_info(name, T.FLOAT, [batch, "channels", "height", "width"])


def lincomb(n: int = LINCOMB_TERMS):
    """y = Σ c[i]·x[i] over rank-4 tensors. Unused terms get coefficient 0 and a 1×1×1×1 zero that broadcasts."""
    nodes, inputs = [], []
    for i in range(n):
        inputs.append(h.make_tensor_value_info(f"x{i}", T.FLOAT, [f"n{i}", f"c{i}", f"h{i}", f"w{i}"]))
        nodes.append(h.make_node("Gather", ["c", f"i{i}"], [f"c{i}"], axis=0))
        nodes.append(h.make_node("Mul", [f"x{i}", f"c{i}"], [f"t{i}"]))
    acc = "t0"
    for i in range(1, n):
        nodes.append(h.make_node("Add", [acc, f"t{i}"], [f"s{i}"]))
        acc = f"s{i}"
    nodes.append(h.make_node("Identity", [acc], ["y"]))
    consts = [h.make_node("Constant", [], [f"i{i}"], value=h.make_tensor(f"i{i}", T.INT64, [], [i])) for i in range(n)]
    return _model(
        consts + nodes,
        inputs + [h.make_tensor_value_info("c", T.FLOAT, [n])],
        [h.make_tensor_value_info("y", T.FLOAT, ["n", "c", "h", "w"])],
        "lincomb",
        lincomb.__doc__,
    )


def cfg_input():
    """UNet input for classifier-free guidance: the scaled latent twice (unconditional, conditional)."""
    nodes = [
        h.make_node("Mul", ["latent", "scale"], ["scaled"]),
        h.make_node("Concat", ["scaled", "scaled"], ["sample"], axis=0),
    ]
    return _model(
        nodes,
        [_latent("latent", 1), h.make_tensor_value_info("scale", T.FLOAT, [1])],
        [_latent("sample", 2)],
        "cfg_input",
        cfg_input.__doc__,
    )


def guidance():
    """Split the batched noise prediction and guide it: uncond + s·(cond − uncond)."""
    nodes = [
        h.make_node("Constant", [], ["split"], value=h.make_tensor("split", T.INT64, [2], [1, 1])),
        h.make_node("Split", ["noise_pred", "split"], ["uncond", "cond"], axis=0),
        h.make_node("Sub", ["cond", "uncond"], ["diff"]),
        h.make_node("Mul", ["diff", "scale"], ["scaled_diff"]),
        h.make_node("Add", ["uncond", "scaled_diff"], ["guided"]),
    ]
    return _model(
        nodes,
        [_latent("noise_pred", 2), h.make_tensor_value_info("scale", T.FLOAT, [1])],
        [_latent("uncond", 1), _latent("cond", 1), _latent("guided", 1)],
        "guidance",
        guidance.__doc__,
    )


def to_rgba():
    """VAE output in [-1, 1] (1×3×H×W) → H×W×4 uint8, rounded as diffusers' image processor does."""
    nodes = [
        h.make_node("Constant", [], ["half"], value=h.make_tensor("half", T.FLOAT, [], [0.5])),
        h.make_node("Constant", [], ["zero"], value=h.make_tensor("zero", T.FLOAT, [], [0.0])),
        h.make_node("Constant", [], ["one"], value=h.make_tensor("one", T.FLOAT, [], [1.0])),
        h.make_node("Constant", [], ["k255"], value=h.make_tensor("k255", T.FLOAT, [], [255.0])),
        h.make_node("Mul", ["image", "half"], ["a"]),
        h.make_node("Add", ["a", "half"], ["b"]),
        h.make_node("Clip", ["b", "zero", "one"], ["c"]),
        h.make_node("Mul", ["c", "k255"], ["d"]),
        h.make_node("Round", ["d"], ["e"]),
        h.make_node("Cast", ["e"], ["rgb"], to=T.UINT8),
        h.make_node("Squeeze", ["rgb", "axis0"], ["chw"]),
        h.make_node("Transpose", ["chw"], ["hwc"], perm=[1, 2, 0]),
        h.make_node("Shape", ["hwc"], ["shape"]),
        h.make_node("Slice", ["shape", "s0", "s2"], ["hw"]),
        h.make_node("Concat", ["hw", "s1"], ["alpha_shape"], axis=0),
        h.make_node("ConstantOfShape", ["alpha_shape"], ["alpha"], value=h.make_tensor("v", T.UINT8, [1], [255])),
        h.make_node("Concat", ["hwc", "alpha"], ["rgba"], axis=2),
        h.make_node("Constant", [], ["axis0"], value=h.make_tensor("axis0", T.INT64, [1], [0])),
        h.make_node("Constant", [], ["s0"], value=h.make_tensor("s0", T.INT64, [1], [0])),
        h.make_node("Constant", [], ["s1"], value=h.make_tensor("s1", T.INT64, [1], [1])),
        h.make_node("Constant", [], ["s2"], value=h.make_tensor("s2", T.INT64, [1], [2])),
    ]
    # constants first so the graph is topologically sorted
    nodes = nodes[-4:] + nodes[:4] + nodes[4:-4]
    return _model(
        nodes,
        [h.make_tensor_value_info("image", T.FLOAT, [1, 3, "height", "width"])],
        [h.make_tensor_value_info("rgba", T.UINT8, ["height", "width", 4])],
        "to_rgba",
        to_rgba.__doc__,
    )


GRAPHS = {"lincomb": lincomb, "cfg_input": cfg_input, "guidance": guidance, "to_rgba": to_rgba}


def write_all(out_dir) -> dict[str, str]:
    """Write every op graph as ops/<name>.onnx; returns name → relative path."""
    from pathlib import Path

    out = {}
    (Path(out_dir) / "ops").mkdir(parents=True, exist_ok=True)
    for name, build in GRAPHS.items():
        rel = f"ops/{name}.onnx"
        onnx.save_model(build(), str(Path(out_dir) / rel))
        out[name] = rel
    return out
