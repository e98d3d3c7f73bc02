"""Training and export: interactions -> trained Keras model -> ONNX -> Triton repository.

Importing ``export`` loads nothing heavy; each command imports TensorFlow only when run.
"""
