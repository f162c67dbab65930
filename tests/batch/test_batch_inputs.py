"""Readers of batch inputs: .npy files and shards, Parquet layouts, chunks, and their errors."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from distilldetect.batch.inputs import (
    InputError,
    NpyArray,
    check_teacher_probs,
    iter_batches,
    open_input,
    plan_chunks,
    read_chunk,
)

RNG = np.random.default_rng(0)
X = RNG.normal(size=(103, 4, 3)).astype(np.float32)


def _all(spec, batch_size):
    batches = list(iter_batches(spec, batch_size))
    return batches, np.concatenate([b.x for b in batches])


def test_npy_file_is_read_in_order_in_batches_that_own_their_memory(tmp_path):
    np.save(tmp_path / "x.npy", X)
    spec = open_input(tmp_path / "x.npy")
    assert (spec.kind, spec.n_rows, spec.instance_shape) == ("npy", 103, (4, 3))
    batches, got = _all(spec, 10)
    assert np.array_equal(got, X)
    assert [b.start for b in batches] == list(range(0, 103, 10))
    assert max(len(b) for b in batches) == 10
    # a copy of the rows of one batch, not a view of a mapping of the whole file
    assert all(b.x.base is None and not isinstance(b.x, np.memmap) for b in batches)


def test_npy_fortran_order_file_reads_the_same_rows(tmp_path):
    np.save(tmp_path / "f.npy", np.asfortranarray(X))
    spec = open_input(tmp_path / "f.npy")
    assert spec.instances.files[0].fortran_order
    assert np.array_equal(_all(spec, 7)[1], X)


def test_folder_of_npy_shards_is_concatenated_in_file_name_order(tmp_path):
    np.save(tmp_path / "part-002.npy", X[60:])
    np.save(tmp_path / "part-000.npy", X[:25])
    np.save(tmp_path / "part-001.npy", X[25:60])
    (tmp_path / "notes.txt").write_text("ignored")
    spec = open_input(tmp_path)
    assert spec.n_rows == 103
    batches, got = _all(spec, 16)
    assert np.array_equal(got, X)
    # chunks never cross a shard and cover every row once, in order
    chunks = plan_chunks(spec, target_rows=10)
    assert chunks[0].start == 0 and chunks[-1].stop == 103
    assert all(a.stop == b.start for a, b in itertools.pairwise(chunks))
    assert max(c.stop - c.start for c in chunks) <= 10
    for c in chunks:
        f_start, f = spec.instances.starts[c.file], spec.instances.files[c.file]
        assert f_start <= c.start < c.stop <= f_start + f.n_rows


def test_virtual_concatenation_reads_across_shards(tmp_path):
    np.save(tmp_path / "a.npy", X[:5])
    np.save(tmp_path / "b.npy", X[5:9])
    arr = NpyArray.open(tmp_path, "input")
    assert np.array_equal(arr.read(3, 8), X[3:8])


def test_shards_that_disagree_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", X[:5])
    np.save(tmp_path / "b.npy", X[:5, :3])
    with pytest.raises(InputError, match="shards of input .* disagree"):
        open_input(tmp_path)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda p: None, "does not exist"),
        (lambda p: p.write_bytes(b"not numpy at all"), "not a .npy file"),
        (lambda p: np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True), "pickle"),
        (lambda p: np.save(p, np.zeros((0, 3), np.float32)), "no rows"),
        (lambda p: np.save(p, np.float32(3.0)), "scalar"),
        (lambda p: np.save(p, np.array(["a", "b"])), "must hold numbers"),
    ],
    ids=["missing", "garbage", "object-dtype", "empty", "scalar", "strings"],
)
def test_bad_npy_inputs_raise_input_error(tmp_path, make, match):
    path = tmp_path / "x.npy"
    make(path)
    with pytest.raises(InputError, match=match):
        open_input(path)


def test_object_npy_is_refused_without_running_its_pickle(tmp_path):
    # An object array whose unpickling would create a file: refusing must not run it.
    import pickle

    marker = tmp_path / "ran"

    class Boom:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    arr = np.empty(1, dtype=object)
    arr[0] = Boom()
    with open(tmp_path / "evil.npy", "wb") as f:
        np.lib.format.write_array(f, arr, allow_pickle=True)
    assert pickle  # the payload above is a pickle of open(marker, "w")
    with pytest.raises(InputError, match="pickle"):
        open_input(tmp_path / "evil.npy")
    assert not marker.exists()


def test_folder_errors(tmp_path):
    with pytest.raises(InputError, match="no .npy or .parquet"):
        open_input(tmp_path)
    np.save(tmp_path / "a.npy", X[:3])
    (tmp_path / "b.parquet").write_bytes(b"PAR1")
    with pytest.raises(InputError, match="both .npy and .parquet"):
        open_input(tmp_path)


@pytest.mark.parametrize("layout", ["fixed", "tensor", "list"])
def test_parquet_layouts_read_the_same_arrays(tmp_path, make_parquet, layout):
    path = make_parquet(tmp_path / "x.parquet", X, layout=layout, row_group_size=20)
    spec = open_input(path)
    assert (spec.kind, spec.n_rows, spec.instance_shape, spec.instances_column) == (
        "parquet",
        103,
        (4, 3),
        "x",
    )
    batches, got = _all(spec, 8)
    assert np.array_equal(got, X)
    assert max(len(b) for b in batches) <= 8
    assert [b.start for b in batches] == sorted(b.start for b in batches)


def test_parquet_folder_with_ids_and_probs(tmp_path, make_parquet):
    probs = RNG.dirichlet(np.ones(5), size=103).astype(np.float32)
    ids = [f"r{i}" for i in range(103)]
    make_parquet(tmp_path / "b.parquet", X[50:], probs=probs[50:], ids=ids[50:], row_group_size=7)
    make_parquet(tmp_path / "a.parquet", X[:50], probs=probs[:50], ids=ids[:50], row_group_size=7)
    spec = open_input(tmp_path, id_column="id", teacher_probs="probs")
    assert spec.n_classes == 5 and spec.instances_column == "x"
    batches = list(iter_batches(spec, 9))
    assert np.array_equal(np.concatenate([b.x for b in batches]), X)
    assert np.array_equal(np.concatenate([b.teacher_probs for b in batches]), probs)
    assert sum((b.ids.to_pylist() for b in batches), []) == ids
    check_teacher_probs(spec)
    chunks = plan_chunks(spec, target_rows=10)
    assert all(a.stop == b.start for a, b in itertools.pairwise(chunks)) and chunks[-1].stop == 103
    got = np.concatenate([b.x for c in chunks for b in read_chunk(spec, c, 4)])
    assert np.array_equal(got, X)


def test_parquet_column_errors(tmp_path, make_parquet):
    path = make_parquet(tmp_path / "x.parquet", X, probs=RNG.dirichlet(np.ones(3), size=103))
    with pytest.raises(InputError, match="no column 'pixels'.*columns are \\['x', 'probs'\\]"):
        open_input(path, instances_column="pixels")
    with pytest.raises(InputError, match="no column 'p' \\(teacher_probs\\)"):
        open_input(path, teacher_probs="p")
    with pytest.raises(InputError, match="2 columns \\['x', 'probs'\\]"):
        open_input(path)  # probs is not named, so both columns could hold instances
    assert open_input(path, teacher_probs="probs").instances_column == "x"


def test_parquet_rows_of_another_length_or_null_are_named(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [[1.0, 2.0, 3.0]] * 5 + [[1.0, 2.0]] + [[0.0, 0.0, 0.0]]
    pq.write_table(pa.table({"x": pa.array(rows)}), tmp_path / "ragged.parquet")
    spec = open_input(tmp_path / "ragged.parquet")
    with pytest.raises(InputError, match="row 5 has 2 values"):
        list(iter_batches(spec, 4))
    pq.write_table(
        pa.table({"x": pa.array([[1.0, 2.0], None, [3.0, 4.0]])}), tmp_path / "n.parquet"
    )
    with pytest.raises(InputError, match="row 1 is null"):
        list(iter_batches(open_input(tmp_path / "n.parquet"), 10))


def test_teacher_probs_that_are_not_probabilities_are_found_by_row(tmp_path, make_parquet):
    probs = RNG.dirichlet(np.ones(4), size=103).astype(np.float32)
    probs[77] = [2.0, -1.0, 0.5, 0.5]  # logits-like
    path = make_parquet(tmp_path / "x.parquet", X, probs=probs, row_group_size=30)
    spec = open_input(path, teacher_probs="probs")
    with pytest.raises(InputError, match="row 77 is not a probability vector"):
        check_teacher_probs(spec, batch_size=16)


def test_npy_teacher_probs(tmp_path):
    np.save(tmp_path / "x.npy", X)
    probs = RNG.dirichlet(np.ones(4), size=103).astype(np.float32)
    np.save(tmp_path / "p.npy", probs)
    spec = open_input(tmp_path / "x.npy", teacher_probs=tmp_path / "p.npy")
    assert spec.n_classes == 4
    assert np.array_equal(np.concatenate([b.teacher_probs for b in iter_batches(spec, 10)]), probs)
    np.save(tmp_path / "short.npy", probs[:50])
    with pytest.raises(InputError, match="has 50 rows but input .* has 103"):
        open_input(tmp_path / "x.npy", teacher_probs=tmp_path / "short.npy")
    np.save(tmp_path / "flat.npy", probs[:, 0])
    with pytest.raises(InputError, match="shape \\(n, k\\)"):
        open_input(tmp_path / "x.npy", teacher_probs=tmp_path / "flat.npy")
    with pytest.raises(InputError, match="applies to Parquet"):
        open_input(tmp_path / "x.npy", instances_column="x")


def test_truncated_npy_is_refused_from_its_header(tmp_path):
    np.save(tmp_path / "x.npy", X)
    data = (tmp_path / "x.npy").read_bytes()
    (tmp_path / "x.npy").write_bytes(data[:-100])
    with pytest.raises(InputError, match="truncated: its header announces 103 rows"):
        open_input(tmp_path / "x.npy")
