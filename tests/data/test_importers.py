from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from gpr.core.errors import GprInputError
from gpr.data.amazon import import_amazon
from gpr.data.movielens import import_ml100k
from gpr.data.schema import load_dataset
from gpr.data.sequences import leave_one_out


def test_leave_one_out_labels() -> None:
    labels = leave_one_out(np.array([3, 4]))
    assert labels.tolist() == ["train", "valid", "test", "train", "train", "valid", "test"]


@pytest.mark.parametrize(
    ("folder", "seq", "users", "items", "inter"),
    [
        ("amazon_beauty", "Beauty.txt", 22363, 12101, 198502),
        ("amazon_sports", "Sports_and_Outdoors.txt", 35598, 18357, 296337),
    ],
)
def test_amazon_counts_match_source(
    shared_data: Path, tmp_path: Path, folder: str, seq: str, users: int, items: int, inter: int
) -> None:
    d = shared_data / folder
    m = import_amazon(d / seq, d / "item_meta.tsv", tmp_path / "ds")
    assert (m["rows"]["users"], m["rows"]["items"], m["rows"]["interactions"]) == (
        users,
        items,
        inter,
    )
    ds = load_dataset(tmp_path / "ds")
    split = ds.col("events", "split").astype(str)
    assert (split == "test").sum() == users and (split == "valid").sum() == users
    assert m["split"] == {"scheme": "leave_one_out", "history_max": 20}
    # the last item of user 1 (line 1 of Beauty.txt is "1 1 2 3 4 5") is its test item
    if folder == "amazon_beauty":
        u1 = ds.col("events", "user_id") == 1
        assert ds.col("events", "item_id")[u1].tolist() == [1, 2, 3, 4, 5]
        assert split[u1].tolist() == ["train", "train", "train", "valid", "test"]
        titles = ds.col("items", "title")
        assert "OPI" in str(titles[0])


def test_ml100k_counts(shared_data: Path, tmp_path: Path) -> None:
    m = import_ml100k(shared_data / "movielens_100k", tmp_path / "ml")
    assert (m["rows"]["users"], m["rows"]["items"], m["rows"]["interactions"]) == (
        943,
        1682,
        100000,
    )
    ds = load_dataset(tmp_path / "ml")
    assert set(np.unique(ds.col("users", "gender"))) == {0, 1}


def test_bad_sequence_file_names_row(tmp_path: Path, shared_data: Path) -> None:
    meta = shared_data / "amazon_beauty" / "item_meta.tsv"
    bad = tmp_path / "seq.txt"
    bad.write_text("1 1 2 3\n2 4 x 6\n")
    with pytest.raises(GprInputError) as e:
        import_amazon(bad, meta, tmp_path / "out")
    assert (e.value.row, e.value.field) == (1, "item_id")
    bad.write_text("1 1 2 3\n2 4 5 99999999\n")
    with pytest.raises(GprInputError, match="not in item_meta") as e:
        import_amazon(bad, meta, tmp_path / "out")
    assert e.value.row == 1
    bad.write_text("")
    with pytest.raises(GprInputError, match="no sequences"):
        import_amazon(bad, meta, tmp_path / "out")
    assert not (tmp_path / "out").exists()
