"""Faces in pixels: model packs, the detector/recogniser engine on ONNX Runtime, the batched recogniser."""
