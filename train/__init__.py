"""Stage 1 and 2: quantization-aware fine-tuning (and its bf16 / PTQ references), then conversion."""
