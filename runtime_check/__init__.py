"""Stage 4: run the bundle through ExecuTorch's runtime and compare it with the eager models."""
