"""Lightning's private API is read in one module, behind a version check that names the supported range."""

import pytest

from lightning_afm import AFMCompressionCallback, MLPStage
from lightning_afm.callbacks import lightning_compat
from lightning_afm.callbacks.lightning_compat import UnsupportedLightningError, check_lightning_version


def test_the_installed_lightning_is_supported():
    check_lightning_version()
    AFMCompressionCallback([MLPStage(rank=4)])


@pytest.mark.parametrize("version", ["2.1.3", "2.7.0", "3.0.0rc1"])
def test_a_lightning_outside_the_range_is_refused_with_the_range(version, monkeypatch):
    monkeypatch.delenv(lightning_compat.SKIP_ENV, raising=False)
    with pytest.raises(UnsupportedLightningError, match=r"supports lightning>=2\.2,<2\.7.*pip install"):
        check_lightning_version(version)
    monkeypatch.setenv(lightning_compat.SKIP_ENV, "1")
    check_lightning_version(version)  # the user's own risk


def test_a_private_attribute_that_is_gone_is_named():
    class Loop:
        pass

    class Trainer:
        fit_loop = Loop()

    with pytest.raises(UnsupportedLightningError, match="fit_loop._data_source"):
        lightning_compat.train_source_loaders(Trainer())
