"""edgeqat: a causal LM from a Hugging Face checkpoint to a phone, through QAT and ExecuTorch."""

__version__ = "0.1.0"
