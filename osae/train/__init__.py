"""Training: SAE architectures and the trainer (no transformers imports here)."""
