"""Validation on every read: each bad-input case gives one error naming file, row and field."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpr.core.errors import GprInputError
from gpr.data.schema import load_dataset
from tests.conftest import run_cli


@pytest.fixture()
def copy(tiny_world: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "ds"
    shutil.copytree(tiny_world, dst)
    return dst


def _rewrite(path: Path, fn) -> None:  # type: ignore[no-untyped-def]
    pq.write_table(fn(pq.read_table(path)), path)


def _set(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    i = table.column_names.index(name)
    return table.set_column(i, name, pa.array(values, type=table.schema.field(name).type))


def test_valid_dataset_loads(tiny_world: Path) -> None:
    assert load_dataset(tiny_world).events.num_rows > 1000


def test_missing_column(copy: Path) -> None:
    _rewrite(copy / "events.parquet", lambda t: t.drop_columns(["timestamp"]))
    with pytest.raises(GprInputError) as e:
        load_dataset(copy)
    assert e.value.field == "timestamp" and e.value.file.endswith("events.parquet")


def test_wrong_dtype(copy: Path) -> None:
    def f(t: pa.Table) -> pa.Table:
        i = t.column_names.index("item_id")
        return t.set_column(i, "item_id", pa.array(t.column("item_id").to_numpy().astype(str)))

    _rewrite(copy / "events.parquet", f)
    with pytest.raises(GprInputError, match="wrong dtype") as e:
        load_dataset(copy)
    assert e.value.field == "item_id"


def test_unknown_item_id(copy: Path) -> None:
    def f(t: pa.Table) -> pa.Table:
        items = t.column("item_id").to_numpy().copy()
        row = int(np.nonzero(items >= 0)[0][5])
        items[row] = 10**9
        f.row = row  # type: ignore[attr-defined]
        return _set(t, "item_id", items)

    _rewrite(copy / "events.parquet", f)
    with pytest.raises(GprInputError, match="unknown id 1000000000") as e:
        load_dataset(copy)
    assert e.value.row == f.row and e.value.field == "item_id"  # type: ignore[attr-defined]


def test_non_monotonic_timestamps(copy: Path) -> None:
    def f(t: pa.Table) -> pa.Table:
        ts = t.column("timestamp").to_numpy().copy()
        users = t.column("user_id").to_numpy()
        rows = np.nonzero(users == users[-1])[0]
        ts[rows[-1]] = ts[rows[0]] - 1 if ts[rows[0]] > 0 else -1
        f.row = int(rows[-1])  # type: ignore[attr-defined]
        return _set(t, "timestamp", ts)

    _rewrite(copy / "events.parquet", f)
    with pytest.raises(GprInputError, match="back in time") as e:
        load_dataset(copy)
    assert e.value.row == f.row and e.value.field == "timestamp"  # type: ignore[attr-defined]


def test_empty_file(copy: Path) -> None:
    _rewrite(copy / "users.parquet", lambda t: t.slice(0, 0))
    with pytest.raises(GprInputError, match="no rows") as e:
        load_dataset(copy)
    assert e.value.file.endswith("users.parquet")


def test_not_parquet(copy: Path) -> None:
    (copy / "items.parquet").write_text("item_id,kind\n1,ad\n")
    with pytest.raises(GprInputError, match="not a readable Parquet"):
        load_dataset(copy)


def test_bad_token_type_names_row(copy: Path) -> None:
    def f(t: pa.Table) -> pa.Table:
        tt = t.column("token_type").to_numpy(zero_copy_only=False).astype(object)
        tt[7] = "X"
        return _set(t, "token_type", tt)

    _rewrite(copy / "events.parquet", f)
    with pytest.raises(GprInputError) as e:
        load_dataset(copy)
    assert (e.value.row, e.value.field) == (7, "token_type")


def test_cli_bad_input_exits_2_with_one_line(copy: Path) -> None:
    _rewrite(copy / "events.parquet", lambda t: t.drop_columns(["split"]))
    r = run_cli("data", "summary", str(copy))
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "events.parquet" in lines[0] and "'split'" in lines[0]


def test_cli_bad_config_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "w"
    r = run_cli(
        "world", "generate", "--preset", "tiny", "--set", "world.n_users=abc", "--out", str(out)
    )
    assert r.returncode == 2 and "world.n_users" in r.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []
    r = run_cli(
        "world", "generate", "--preset", "tiny", "--set", "world.no_such_field=1", "--out", str(out)
    )
    assert r.returncode == 2 and "no_such_field" in r.stderr and not out.exists()


def test_failed_run_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gpr.core.config import load_config
    from gpr.world import generate, generate_world

    def boom(*a, **k):  # type: ignore[no-untyped-def]
        raise RuntimeError("disk full")

    monkeypatch.setattr(generate, "run_logging_policy", boom)
    cfg = load_config("tiny")
    with pytest.raises(RuntimeError):
        generate_world(cfg.world, 1, tmp_path / "w", "tiny")
    assert list(tmp_path.iterdir()) == []


def test_files_edited_after_the_manifest_are_refused(copy: Path) -> None:
    """A valid but edited events file no longer matches the manifest's content hash."""
    _rewrite(copy / "events.parquet", lambda t: t.slice(0, t.num_rows - 1))
    with pytest.raises(GprInputError, match="content_hash") as e:
        load_dataset(copy)
    assert e.value.field == "content_hash"


@pytest.mark.parametrize("column", ["bid", "price", "budget"])
def test_an_ad_with_a_negative_value_is_named(copy: Path, column: str) -> None:
    items = pq.read_table(copy / "items.parquet")
    kind = items.column("kind").to_numpy(zero_copy_only=False).astype(str)
    row = int(np.nonzero(kind == "ad")[0][3])
    values = items.column(column).to_numpy(zero_copy_only=False).copy()
    values[row] = -1.0
    _rewrite(copy / "items.parquet", lambda t: _set(t, column, values))
    with pytest.raises(GprInputError, match=f"positive {column}") as e:
        load_dataset(copy)
    assert (e.value.field, e.value.row) == (column, row)
