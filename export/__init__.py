"""Stage 3: the converted model -> an ExecuTorch `.pte` with a KV cache, packed into a bundle."""
