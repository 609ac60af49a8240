"""The embedding networks in torch: backbones, attention, EmbeddingNet, model folders, and their
export to ONNX."""
