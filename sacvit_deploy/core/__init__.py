"""The bottom layer: the artifact contract and the rules every other layer shares.

Nothing here imports from the rest of the package (a test enforces it), and nothing here needs
torch, onnx or onnxruntime at import time:

* :mod:`~sacvit_deploy.core.errors`: the user-error classes;
* :mod:`~sacvit_deploy.core.config`: the model configuration every manifest carries;
* :mod:`~sacvit_deploy.core.manifest`: the manifest (typed sections, validated at load) and tensor specs;
* :mod:`~sacvit_deploy.core.publish`: staging and atomic publishing of output folders;
* :mod:`~sacvit_deploy.core.onnx_files`: ONNX external-data safety checks;
* :mod:`~sacvit_deploy.core.exit_rule`: the one definition of "this sample exits";
* :mod:`~sacvit_deploy.core.compare`: the one comparator of named runners (parity checks);
* :mod:`~sacvit_deploy.core.formats` and :mod:`~sacvit_deploy.core.trt_families`: the tables of
  checkpoint formats and TensorRT version families.
"""
