"""lightning-afm: low-rank compression of CTR models (Atomic Feature Mimicking) for PyTorch Lightning."""

__version__ = "0.1.0"
