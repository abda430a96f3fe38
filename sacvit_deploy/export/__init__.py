"""Export: two ONNX graphs (stage 1 + exit gate, stage 2), a manifest, verification, TensorRT lint."""
