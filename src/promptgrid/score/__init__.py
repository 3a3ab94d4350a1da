"""The scoring stage: a score for every stored image (weightless pixel metrics, CLIP through ONNX Runtime)."""
