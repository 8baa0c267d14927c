"""The engines that run the pinned face models (OpenVINO, ONNX Runtime), their compiled-model cache and the weight registry."""
