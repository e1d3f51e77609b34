"""hrm-text: pretrain, evaluate, chat with and serve HRM-Text language models."""

__version__ = "0.1.0"
