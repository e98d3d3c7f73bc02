"""Triton: model config, repository publishing, the local tritonserver, the python backend."""
