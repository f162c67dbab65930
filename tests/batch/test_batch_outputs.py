"""Atomic Parquet outputs: whole or absent, existing outputs kept unless replaced on success."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from distilldetect.batch.inputs import InputError
from distilldetect.batch.outputs import (
    AtomicParquetWriter,
    check_output,
    output_paths,
    scores_schema,
)


def _rows(n, start=0):
    import pyarrow as pa

    return {
        "row_id": np.arange(start, start + n),
        "instance_score": np.linspace(0, 1, n),
        "is_adversarial": pa.nulls(n, pa.bool_()),
    }


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_commit_writes_the_rows_in_row_groups_and_leaves_no_temp_file(tmp_path):
    import pyarrow.parquet as pq

    path = tmp_path / "s.parquet"
    with AtomicParquetWriter(path, scores_schema(), row_group_rows=100) as w:
        for start in range(0, 250, 50):
            w.write(_rows(50, start))
            assert not path.exists()  # nothing under the final name until commit
    table = pq.read_table(path)
    assert table["row_id"].to_pylist() == list(range(250))
    assert table["is_adversarial"].null_count == 250
    assert pq.ParquetFile(path).metadata.num_row_groups == 3  # 100 + 100 + 50
    assert _leftovers(tmp_path) == []


def test_an_error_removes_the_temp_file_and_keeps_the_existing_output(tmp_path):
    path = tmp_path / "s.parquet"
    path.write_bytes(b"what the user had")
    with pytest.raises(RuntimeError, match="boom"):
        with AtomicParquetWriter(path, scores_schema(), overwrite=True) as w:
            w.write(_rows(10))
            raise RuntimeError("boom")
    assert path.read_bytes() == b"what the user had"
    assert _leftovers(tmp_path) == []


def test_existing_output_is_refused_without_overwrite(tmp_path):
    path = tmp_path / "s.parquet"
    path.write_bytes(b"x")
    with pytest.raises(InputError, match="exists"):
        AtomicParquetWriter(path, scores_schema())
    with pytest.raises(InputError, match="--overwrite"):
        check_output(path, False, [])
    check_output(path, True, [])  # allowed with overwrite


def test_check_output_refusals(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        check_output(tmp_path / "missing" / "s.parquet", False, [])
    with pytest.raises(InputError, match="is a folder"):
        check_output(tmp_path, True, [])
    data = tmp_path / "x.parquet"
    data.write_bytes(b"x")
    with pytest.raises(InputError, match="also an input"):
        check_output(data, True, [str(data)])


def test_output_paths():
    assert output_paths("a/s.parquet", False) == (output_paths("a/s.parquet", True)[0], None)
    assert output_paths("a/s.parquet", True)[1].name == "s.drift.parquet"
    assert output_paths("a/scores", True)[1].name == "scores.drift.parquet"


def test_a_killed_writer_never_leaves_a_file_under_the_final_name(tmp_path):
    # The process dies (SIGKILL) in the middle of writing: the final name must not exist.
    script = textwrap.dedent(
        f"""
        import os, signal
        import numpy as np
        import pyarrow as pa
        from distilldetect.batch.outputs import AtomicParquetWriter, scores_schema
        w = AtomicParquetWriter({str(tmp_path / "s.parquet")!r}, scores_schema(), row_group_rows=10)
        for start in range(0, 100, 10):
            w.write({{"row_id": np.arange(start, start + 10), "instance_score": np.zeros(10),
                     "is_adversarial": pa.nulls(10, pa.bool_())}})
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", script], env=env, timeout=120)
    assert proc.returncode == -9
    assert not (tmp_path / "s.parquet").exists()
    assert len(_leftovers(tmp_path)) == 1  # the partial temp file, under a hidden name


def test_batches_split_across_row_groups_keep_values_nulls_and_ids(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = scores_schema(pa.field("id", pa.string()))
    path = tmp_path / "s.parquet"
    flags = [True, None, False] * 70
    with AtomicParquetWriter(path, schema, row_group_rows=100) as w:
        for start in range(0, 210, 70):
            w.write(
                {
                    "row_id": np.arange(start, start + 70),
                    "id": pa.array([f"r{i}" for i in range(start, start + 70)]),
                    "instance_score": np.arange(start, start + 70) / 10,
                    "is_adversarial": pa.array(flags[start : start + 70], type=pa.bool_()),
                }
            )
    table = pq.read_table(path)
    assert [pq.ParquetFile(path).metadata.row_group(i).num_rows for i in range(3)] == [100, 100, 10]
    assert table["row_id"].to_pylist() == list(range(210))
    assert table["id"].to_pylist() == [f"r{i}" for i in range(210)]
    assert table["instance_score"].to_pylist() == [i / 10 for i in range(210)]
    assert table["is_adversarial"].to_pylist() == flags
