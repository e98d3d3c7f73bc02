"""ONNX: the served graphs, their conversion with tf2onnx, and streaming the weights in."""
