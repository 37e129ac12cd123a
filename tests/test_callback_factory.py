"""The compression group builds its stages and callback from ``_target_`` blocks."""

from dataclasses import dataclass

import pytest

from lightning_afm.callbacks import AFMCompressionCallback, EmbeddingStage, MLPStage
from lightning_afm.callbacks.factory import build_compression_callback


@dataclass
class HalfRankMLPStage(MLPStage):
    """A user's own stage: MLPStage with one extra setting."""

    note: str = ""


class CountingCallback(AFMCompressionCallback):
    """A user's own callback subclass."""


def test_the_app_configs_name_their_classes(compose_app):
    cfg = compose_app(["compression=svd"])  # svd inherits afm's blocks through the defaults list
    assert cfg.compression._target_ == "lightning_afm.callbacks.AFMCompressionCallback"
    assert cfg.compression.mlp._target_ == "lightning_afm.callbacks.MLPStage"
    callback = build_compression_callback(cfg.compression)
    assert type(callback) is AFMCompressionCallback
    assert [type(s) for s in callback.stages] == [MLPStage, EmbeddingStage]
    assert [s.method for s in callback.stages] == ["svd", "svd"]


def test_a_users_stage_and_callback_are_one_override_away(compose_app):
    cfg = compose_app(["compression=afm_mlp", f"compression._target_={__name__}.CountingCallback",
                       f"compression.mlp._target_={__name__}.HalfRankMLPStage", "+compression.mlp.note=mine"])
    callback = build_compression_callback(cfg.compression)
    assert type(callback) is CountingCallback
    (stage,) = callback.stages
    assert type(stage) is HalfRankMLPStage and stage.note == "mine" and stage.rank == cfg.compression.mlp.rank


def test_plain_dicts_build_the_default_classes():
    callback = build_compression_callback({"baseline_epochs": 0, "emb": {"rank": 3}, "mlp": {"rank": 5}})
    assert [(type(s), s.rank) for s in callback.stages] == [(MLPStage, 5), (EmbeddingStage, 3)]  # mlp runs first
    assert callback.baseline_epochs == 0
    assert build_compression_callback({"mlp": None, "emb": None}) is None


def test_bad_targets_and_keys_are_named():
    with pytest.raises(ValueError, match=r"compression\.mlp\._target_: cannot import 'no_such\.Stage'"):
        build_compression_callback({"mlp": {"_target_": "no_such.Stage", "rank": 2}})
    with pytest.raises(ValueError, match=r"compression\.emb\._target_: 'collections\.OrderedDict' is not a "
                                         r"CompressionStage"):
        build_compression_callback({"emb": {"_target_": "collections.OrderedDict", "rank": 2}})
    with pytest.raises(ValueError, match=r"compression\._target_: .* is not a AFMCompressionCallback"):
        build_compression_callback({"_target_": "lightning_afm.callbacks.MLPStage", "mlp": {"rank": 2}})
    with pytest.raises(ValueError, match=r"compression config has unknown keys \['basline_epochs'\]"):
        build_compression_callback({"basline_epochs": 1, "mlp": {"rank": 2}})
    with pytest.raises(ValueError, match=r"compression: .*baseline_epochs"):
        build_compression_callback({"baseline_epochs": -1, "mlp": {"rank": 2}})
