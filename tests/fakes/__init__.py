"""Test doubles for packages that cannot be installed here: TensorRT and pycuda (both need a GPU)."""
