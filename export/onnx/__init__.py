"""The bundle's second program: an ONNX decoder with a KV cache for ONNX Runtime, built from the same converted
weights as the `.pte` (the int values and per-group scales that `convert` produced become the initializers of
ONNX Runtime's MatMulNBits and GatherBlockQuantized, never re-quantized by another tool)."""
