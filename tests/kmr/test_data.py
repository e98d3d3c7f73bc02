"""Tests of kmr.data.files.load_interactions: layouts, ids, and every bad-input message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from export.errors import DataError
from kmr.data.files import load_interactions
from kmr.vocabulary import UnknownIdError

ML_LATEST = (
    "userId,movieId,rating,timestamp\n"
    "1,10,4.0,100\n"
    "1,20,5.0,101\n"
    "1,30,2.0,102\n"
    "2,10,4.5,103\n"
    "2,40,3.5,104\n"
)
ML_100K = "1\t10\t4\t100\n1\t20\t5\t101\n1\t30\t2\t102\n2\t10\t5\t103\n2\t40\t3\t104\n"


def write(tmp_path: Path, text: str, name: str = "ratings.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_load_interactions_reads_positives_when_movielens_latest_layout(tmp_path):
    data = load_interactions(write(tmp_path, ML_LATEST))
    assert data.user_vocab.ids == (1, 2)
    assert data.item_vocab.ids == (10, 20)
    assert data.user_vocab.to_raw(data.users).tolist() == [1, 1, 2]
    assert data.item_vocab.to_raw(data.items).tolist() == [10, 20, 10]
    assert data.timestamps.tolist() == [100.0, 101.0, 103.0]


def test_load_interactions_reads_positives_when_movielens_100k_tab_layout(tmp_path):
    data = load_interactions(write(tmp_path, ML_100K, "u.data"))
    assert data.user_vocab.to_raw(data.users).tolist() == [1, 1, 2]
    assert data.item_vocab.to_raw(data.items).tolist() == [10, 20, 10]
    assert data.user_vocab.kind == "int"


def test_load_interactions_keeps_string_ids_when_ids_are_not_integers(tmp_path):
    text = "user_id;item_id;rating\nalice;x-1;5\nalice;y;4\nbob;x-1;4\n"
    data = load_interactions(write(tmp_path, text))
    assert data.user_vocab.ids == ("alice", "bob")
    assert data.item_vocab.ids == ("x-1", "y")
    assert data.user_vocab.kind == "str"


def test_load_interactions_counts_every_row_when_no_rating_column(tmp_path):
    data = load_interactions(write(tmp_path, "user,item\na,1\na,2\nb,1\n"))
    assert len(data) == 3
    assert data.timestamps is None


def test_load_interactions_applies_threshold_when_rating_threshold_set(tmp_path):
    data = load_interactions(write(tmp_path, ML_LATEST), rating_threshold=3.5)
    assert len(data) == 4


def test_load_interactions_keeps_latest_row_when_pair_is_duplicated(tmp_path):
    text = "userId,movieId,rating,timestamp\n1,10,5,200\n1,10,1,100\n1,20,4,150\n1,30,1,300\n"
    data = load_interactions(write(tmp_path, text))
    assert data.item_vocab.to_raw(data.items).tolist() == [10, 20]
    assert data.timestamps.tolist() == [200.0, 150.0]
    later_low = text + "1,10,1,400\n1,40,5,5\n"
    data = load_interactions(write(tmp_path, later_low))
    assert sorted(data.item_vocab.to_raw(data.items).tolist()) == [20, 40]


def test_load_interactions_uses_named_columns_when_columns_given(tmp_path):
    text = "ts|stars|who|what\n1|5|u1|i1\n2|5|u1|i2\n"
    data = load_interactions(
        write(tmp_path, text), user_col="who", item_col="what", rating_col="stars",
        timestamp_col="ts",
    )
    assert data.item_vocab.ids == ("i1", "i2")
    assert data.timestamps.tolist() == [1.0, 2.0]


def test_load_interactions_uses_positions_when_no_header_and_sep_given(tmp_path):
    text = "5 i1 u1\n5 i2 u1\n"
    data = load_interactions(
        write(tmp_path, text), sep=" ", header=False, user_col=2, item_col=1, rating_col=0
    )
    assert data.user_vocab.ids == ("u1",)
    assert len(data) == 2


def assert_rejected(tmp_path: Path, path: Path, *fragments: str, **kwargs) -> None:
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(DataError) as info:
        load_interactions(path, **kwargs)
    message = str(info.value)
    assert path.name in message
    for fragment in fragments:
        assert fragment in message, message
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_load_interactions_raises_when_file_missing(tmp_path):
    assert_rejected(tmp_path, tmp_path / "nope.csv", "no such file")


def test_load_interactions_raises_when_file_empty(tmp_path):
    assert_rejected(tmp_path, write(tmp_path, ""), "line 1", "empty")


def test_load_interactions_raises_when_only_header(tmp_path):
    assert_rejected(tmp_path, write(tmp_path, "userId,movieId,rating\n"), "line 1", "header")


def test_load_interactions_raises_when_column_missing(tmp_path):
    path = write(tmp_path, ML_LATEST)
    assert_rejected(tmp_path, path, "line 1", "'score'", rating_col="score")


def test_load_interactions_raises_when_user_column_not_found(tmp_path):
    path = write(tmp_path, "who,movieId,rating\n1,2,5\n1,3,5\n")
    assert_rejected(tmp_path, path, "line 1", "user column")


def test_load_interactions_raises_when_rating_not_numeric(tmp_path):
    path = write(tmp_path, ML_LATEST.replace("2,40,3.5,104", "2,40,good,104"))
    assert_rejected(tmp_path, path, "line 6", "rating 'good' is not a number")


def test_load_interactions_raises_when_timestamp_not_numeric(tmp_path):
    path = write(tmp_path, ML_LATEST.replace("1,20,5.0,101", "1,20,5.0,yesterday"))
    assert_rejected(tmp_path, path, "line 3", "timestamp 'yesterday'")


def test_load_interactions_raises_when_rating_not_finite(tmp_path):
    path = write(tmp_path, ML_LATEST.replace("1,20,5.0,101", "1,20,nan,101"))
    assert_rejected(tmp_path, path, "line 3", "not a finite number")


def test_load_interactions_raises_when_row_too_short(tmp_path):
    path = write(tmp_path, ML_LATEST + "3,50\n")
    assert_rejected(tmp_path, path, "line 7", "expected at least 4 fields")


def test_load_interactions_raises_when_no_user_has_two_positives(tmp_path):
    text = "userId,movieId,rating\n1,10,5\n1,20,1\n2,10,4\n"
    assert_rejected(tmp_path, write(tmp_path, text), "fewer than 2 interactions for every user")


def test_load_interactions_reports_physical_line_when_blank_lines_present(tmp_path):
    text = "userId,movieId,rating\n\n1,10,5\n\n1,20,x\n"
    assert_rejected(tmp_path, write(tmp_path, text), "line 5")


def test_load_interactions_maps_indices_densely_when_ids_sparse(tmp_path):
    text = "user,item\n1000,7\n1000,99999\n5,7\n"
    data = load_interactions(write(tmp_path, text))
    assert data.users.dtype == np.int64
    assert data.users.max() < data.num_users and data.items.max() < data.num_items


def test_load_interactions_raises_when_rows_have_one_field(tmp_path):
    # "1:10:5" has no separator the detection knows: one field per row, not a crash.
    path = write(tmp_path, "1:10:5\n1:11:5\n")
    assert_rejected(tmp_path, path, "line 1", "1 field", "--sep")


def test_load_interactions_keeps_ids_as_strings_when_beyond_int64(tmp_path):
    text = "user,item\n99999999999999999999,1\n99999999999999999999,2\n"
    data = load_interactions(write(tmp_path, text))
    assert data.user_vocab.kind == "str"
    assert data.user_vocab.to_raw(data.users).tolist() == ["99999999999999999999"] * 2
    assert data.item_vocab.kind == "int"


def test_load_interactions_keeps_ids_as_text_when_not_canonical_ints(tmp_path):
    data = load_interactions(write(tmp_path, "user,item\n+5,-1\n+5,7\n5,7\n5,-1\n"))
    assert data.user_vocab.ids == ("+5", "5") and data.item_vocab.ids == (-1, 7)
    zeros = load_interactions(write(tmp_path, "user,item\n001,0439708184\n001,439708184\n"
                                              "1,439708184\n1,0439708184\n"))
    assert zeros.user_vocab.ids == ("001", "1")  # two users, not one
    assert zeros.item_vocab.ids == ("0439708184", "439708184")
    assert data.item_vocab.to_indices(["-1", 7]).tolist() == [0, 1]  # canonical text is ok
    with pytest.raises(UnknownIdError):
        data.item_vocab.to_indices(["007"])
    text = "user,item\n\u0663,1\n\u0663,2\n"  # Arabic-Indic 3: text, as requests treat it
    assert load_interactions(write(tmp_path, text)).user_vocab.ids == ("\u0663",)
