"""Lightning callbacks: where compression meets the training loop."""

from lightning_afm.callbacks.afm_compression import AFMCompressionCallback
from lightning_afm.callbacks.stages import CompressionStage, EmbeddingStage, MLPStage
from lightning_afm.callbacks.throughput import TrainingThroughput

__all__ = ["AFMCompressionCallback", "CompressionStage", "EmbeddingStage", "MLPStage", "TrainingThroughput"]
