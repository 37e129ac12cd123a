import pytest

from lightning_afm.data.schema import CategoricalField, Schema


def test_from_vocab_sizes_names_and_views():
    s = Schema.from_vocab_sizes([3, 5], numeric=2)
    assert s.categorical_names == ["C1", "C2"]
    assert s.numeric == ("I1", "I2")
    assert s.vocab_sizes == [3, 5]
    assert (s.num_categorical, s.num_numeric) == (2, 2)


def test_round_trip_through_dict_and_file(tmp_path):
    s = Schema.from_vocab_sizes([3, 5], numeric=["price"], names=["site", "device"])
    assert Schema.from_dict(s.to_dict()) == s
    s.save(tmp_path / "schema.json")
    assert Schema.load(tmp_path / "schema.json") == s
    assert Schema.from_dict(s) is s


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: CategoricalField("a", 0), "vocab_size must be >= 1"),
        (lambda: CategoricalField("", 3), "non-empty name"),
        (lambda: Schema.from_vocab_sizes([3, 4], names=["a", "a"]), "repeated"),
        (lambda: Schema(categorical=()), "at least one field"),
        (lambda: Schema.from_vocab_sizes([3], names=["a", "b"]), "2 names for 1"),
    ],
)
def test_bad_schemas_say_what_is_wrong(build, message):
    with pytest.raises(ValueError, match=message):
        build()
