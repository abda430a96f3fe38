"""TensorRT engines: build (``build-engine``), version handling, the FP16 graph rewrite, INT8 calibration.

Nothing here imports ``tensorrt``, ``pycuda`` or ``onnx`` at module level: they are imported inside
the functions that need them, so the CLI works without the optional extras.
"""
