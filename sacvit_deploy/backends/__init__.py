"""Backends: one runner protocol, implemented by torch, ONNX Runtime and TensorRT."""
