"""A request-size gateway in front of tritonserver (nginx sized from the export's bounds).

Triton 2.51 has no request byte limit ahead of the python backend's shared memory, so an
oversized request is copied there before `model.py` can refuse it, and that memory stays
with the stub. `limits` computes the largest legal request of every model in a
repository; `nginx` runs an nginx whose ``client_max_body_size`` refuses anything larger
before Triton reads it.
"""
