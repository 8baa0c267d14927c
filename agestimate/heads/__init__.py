"""Age and gender heads at inference (ONNX, no torch) and the calibration of their outputs."""
