"""Checkpoint → web bundle: ONNX models verified against PyTorch, op graphs, manifest, precision builds."""
