"""Smaller model files for the browser: fp16, int8 and int4 versions of an exported fp32 component.

Why these three: fp16 halves every weight and runs natively on WebGPU adapters with `shader-f16`;
int8 (dynamic, MatMul/Gemm only) shrinks the big matrices and runs at about fp32 speed on WASM;
int4 (weight-only MatMulNBits, which both onnxruntime-web providers implement) is smallest for
transformer-heavy graphs. Convolutions stay fp32 under int8/int4: ConvInteger is 2× slower on
CPU and missing on WebGPU (see RECIPES.md).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

from .onnxfiles import CHUNK_BYTES, save_model

PRECISIONS = ("fp32", "fp16", "int8", "int4")
# sensible defaults per target: what each onnxruntime-web provider runs well
DEFAULTS = {
    "wasm": {"text_encoder": "int8", "unet": "fp32", "vae_decoder": "fp32"},
    "webgpu": {"text_encoder": "fp16", "unet": "fp16", "vae_decoder": "fp16"},
    "fp32": {"text_encoder": "fp32", "unet": "fp32", "vae_decoder": "fp32"},
}


def quantize(src: Path, dst: Path, precision: str, chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    """Write `precision` version of the fp32 model file `src` to `dst`; returns the written file names."""
    import onnx

    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        model = onnx.load(str(src), load_external_data=True)
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
    if precision == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / dst.name
            quantize_dynamic(str(src), str(out), op_types_to_quantize=["MatMul", "Gemm"], weight_type=QuantType.QInt8,
                             use_external_data_format=src.stat().st_size > 1_800_000_000 or _has_external(src))
            return save_model(onnx.load(str(out), load_external_data=True), dst, chunk_bytes)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    model = onnx.load(str(src), load_external_data=True)
    q = MatMulNBitsQuantizer(model, block_size=32, is_symmetric=True, op_types_to_quantize=("MatMul",))
    q.process()
    return save_model(q.model.model, dst, chunk_bytes)


def _has_external(path: Path) -> bool:
    return any(p.name.startswith(path.stem) and p != path for p in path.parent.iterdir())

