"""tunebench: compare tuning paradigms for vision-language models with measured numbers."""

__version__ = "0.1.0"
