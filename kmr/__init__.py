"""kmr: Keras layers for matrix-factorisation recommenders, and the served-model contract.

Importing ``kmr`` itself loads nothing heavy: ``kmr.contract`` is pure Python so the
thin client can use it; ``kmr.layers`` and ``kmr.models`` import Keras.
"""

__version__ = "0.1.0"
