"""Build-time tools: read dlib's model files and write the ONNX / numpy models edgeface ships.

Nothing here runs in the camera loop; `onnx` is imported only by the builders.
"""
