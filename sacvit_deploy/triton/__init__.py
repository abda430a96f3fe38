"""Triton Inference Server: a model repository with the early-exit gate (BLS), its checks, a client.

* :mod:`~sacvit_deploy.triton.repository`: ``write_repository`` (``sacvit-deploy triton``).
* :mod:`~sacvit_deploy.triton.config`: the ``config.pbtxt`` contents.
* :mod:`~sacvit_deploy.triton.validate`: ``validate_repository`` (``sacvit-deploy triton --check``).
* :mod:`~sacvit_deploy.triton.client`: ``open_triton`` (``sacvit-deploy infer --triton URL``).
* :mod:`~sacvit_deploy.triton.serving`: ``serve_artifacts`` (``sacvit-deploy serve``), on
  :mod:`~sacvit_deploy.triton.server` (a real tritonserver on 127.0.0.1).
* ``bls_model.py``: the Python-backend model copied into the repository; never imported here.
"""
