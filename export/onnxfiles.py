"""Writing ONNX models the way a browser can load them: weights in chunks of bounded size.

Why chunks: a full-size SD UNet holds 3.4 GB of fp32 weights. A browser must hold each file it fetches
in one ArrayBuffer, and large buffers fail or thrash well before that size, so every file of a bundle
stays under `CHUNK_BYTES`. ONNX's external-data format already lets each tensor name its own file and
offset, so chunking is only a matter of where each tensor is written; onnxruntime (native and web,
via `externalData`) reads the result unchanged.
"""

from __future__ import annotations

from pathlib import Path

CHUNK_BYTES = 512 * 2**20  # no bundle file larger than this
MIN_EXTERNAL_BYTES = 1024  # smaller tensors stay inside the .onnx file


def _tensors(model):
    """Initializers and Constant-node tensors of the main graph: where an exported model keeps weights."""
    yield from model.graph.initializer
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t


def _payload(tensor) -> bytes:
    from onnx import numpy_helper

    return tensor.raw_data if tensor.HasField("raw_data") else numpy_helper.to_array(tensor).tobytes()


def _nbytes(tensor) -> int:
    """Size of a tensor's data without copying it out of the protobuf."""
    import numpy as np
    from onnx import helper

    if tensor.HasField("raw_data"):
        return len(tensor.raw_data)
    count = int(np.prod(tensor.dims)) if len(tensor.dims) else 1
    return count * np.dtype(helper.tensor_dtype_to_np_dtype(tensor.data_type)).itemsize


def save_model(model, dst: Path, chunk_bytes: int = CHUNK_BYTES) -> list[str]:
    """Write `model` (weights loaded) to dst; returns the file names written, the .onnx first.

    A model whose weights fit in one chunk is a single file. Otherwise its big tensors go to
    dst.data (one chunk) or dst.data.00, dst.data.01, … (each ≤ chunk_bytes; one tensor never spans
    two files). `model` is modified in place."""
    import onnx
    from onnx.external_data_helper import set_external_data

    dst = Path(dst)
    sized = [(t, n) for t in _tensors(model) if (n := _nbytes(t)) >= MIN_EXTERNAL_BYTES]
    total = sum(n for _, n in sized)
    if total <= chunk_bytes and total + 64 * 2**20 < 2**31:  # fits one file (protobuf's limit is 2 GB)
        onnx.save_model(model, str(dst))
        return [dst.name]
    chunks: list[list] = [[]]  # tensors per chunk, in graph order
    size = 0
    for t, n in sized:
        if chunks[-1] and size + n > chunk_bytes:
            chunks.append([])
            size = 0
        chunks[-1].append(t)
        size += n
    names = [f"{dst.name}.data"] if len(chunks) == 1 else [f"{dst.name}.data.{i:02d}" for i in range(len(chunks))]
    for name, members in zip(names, chunks):
        with open(dst.parent / name, "wb") as f:
            for t in members:
                data = _payload(t)
                offset = f.tell()
                f.write(data)
                for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data"):
                    t.ClearField(field)
                t.raw_data = data  # set_external_data insists on raw_data being present
                del t.external_data[:]
                set_external_data(t, location=name, offset=offset, length=len(data))
                t.ClearField("raw_data")
                t.data_location = onnx.TensorProto.EXTERNAL
    onnx.save_model(model, str(dst))
    return [dst.name, *names]
