"""codegpt: pretrain Codex-style Python code models from scratch."""
__version__ = "0.1.0"
