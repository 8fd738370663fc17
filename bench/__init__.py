"""Benchmarks: native onnxruntime, diffusers PyTorch and the page, on one bundle and prompt, against this machine's peak."""
