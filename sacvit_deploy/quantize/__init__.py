"""INT8 by explicit quantization: Q/DQ graphs from a float export (``sacvit-deploy quantize``).

* :mod:`.qdq`: which nodes are quantized, and one graph through ``onnxruntime.quantization``;
* :mod:`.artifacts`: a whole export folder (stage 1, stage 2, baseline) -> an int8 folder + manifest;
* :mod:`.compare`: the int8 graphs against the float ones (agreement, exit decisions, accuracy).

Heavy modules (onnx, onnxruntime) are imported inside the functions that need them.
"""
