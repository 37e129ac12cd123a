"""Verified export of a trained (or compressed) CTR model to ONNX, TorchScript or a torch.export program.

:func:`export_model` writes the artifact (probabilities out, dynamic batch), checks it against
eager PyTorch with the format's own runtime, and writes a manifest; nothing is written when the
check fails.
"""

from lightning_afm.export.artifact import ExportCheckFailed, export_model
from lightning_afm.export.formats import FORMATS, MissingExtra, load_runner
from lightning_afm.export.manifest import read_manifest

__all__ = ["FORMATS", "ExportCheckFailed", "MissingExtra", "export_model", "load_runner", "read_manifest"]
