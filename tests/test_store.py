"""Store: whole-object writes, row groups per target, listings, preflight, S3 through moto."""

from __future__ import annotations

import os
import pickle
import threading
import time

import pyarrow as pa
import pytest

from bluff_ray.results.store import SealedError, StorageError, Store, table_to_parquet


def test_one_row_group_per_target_including_empty_ones(tmp_path):
    t = pa.table({"target": pa.array([1, 1, 4], pa.int32()), "v": [0.5, 1.5, 2.5]})
    s = Store(str(tmp_path / "root"))
    s.write_table("nodes/original=0/part-0.parquet", t, group_by="target", groups=[1, 3, 4])
    f = s.read_parquet_file("nodes/original=0/part-0.parquet")
    assert [f.metadata.row_group(i).num_rows for i in range(f.metadata.num_row_groups)] == [2, 0, 1]
    assert f.read_row_group(2).column("v").to_pylist() == [2.5]
    col = f.metadata.row_group(0).column(0)
    assert col.compression == "ZSTD" and col.statistics.has_min_max  # partition files: zstd (layout.PARTITION_OPTIONS)
    with pytest.raises(ValueError, match="sorted"):
        table_to_parquet(t.take([2, 0, 1]), group_by="target", groups=[1, 4])
    with pytest.raises(ValueError, match="not in groups"):
        table_to_parquet(t, group_by="target", groups=[1])


def test_local_writes_leave_no_temporary_files_and_list_relative_paths(tmp_path):
    s = Store(str(tmp_path))
    s.write_bytes("a/b/c.bin", b"x" * 10)
    s.write_json("m.json", {"k": [1, 2]})
    assert s.list() == ["a/b/c.bin", "m.json"]
    assert s.list("a") == ["a/b/c.bin"] and s.list("missing") == []
    assert sorted(os.listdir(tmp_path / "a" / "b")) == ["c.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "m.json").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600
    assert s.read_json("m.json") == {"k": [1, 2]}
    s.delete("a")
    assert not s.exists("a/b/c.bin")


def test_failed_local_write_keeps_the_old_object(tmp_path, monkeypatch):
    """A write that fails before it is committed leaves the previous object and no debris."""
    s = Store(str(tmp_path))
    s.write_bytes("f.bin", b"old")

    def fail(*_a, **_k):
        raise OSError("disk gone")

    monkeypatch.setattr("bluff_ray.localfile.os.replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        s.write_bytes("f.bin", b"new")
    assert s.read_bytes("f.bin") == b"old"
    assert os.listdir(tmp_path) == ["f.bin"]


def test_seal_waits_for_the_write_in_progress_and_refuses_every_later_one(tmp_path, monkeypatch):
    """What a stopped worker relies on: once seal() returns True, no write is running and none starts."""
    import bluff_ray.results.store as store_mod

    s = Store(str(tmp_path))
    s.write_bytes("gone.bin", b"x")
    entered, release = threading.Event(), threading.Event()
    real = store_mod.atomic_write

    def slow(path, data):
        entered.set()
        assert release.wait(10)
        real(path, data)

    monkeypatch.setattr(store_mod, "atomic_write", slow)
    writer = threading.Thread(target=s.write_bytes, args=("marker.bin", b"done"))
    writer.start()
    assert entered.wait(10)
    assert s.seal(timeout_s=0.2) is False  # the write in progress is not cut off ...
    assert not (tmp_path / "marker.bin").exists()
    release.set()
    assert s.seal(timeout_s=10) is True  # ... and seal returns once it is whole
    writer.join(10)
    assert (tmp_path / "marker.bin").read_bytes() == b"done"
    for write in (
        lambda: s.write_bytes("late.bin", b"x"),
        lambda: s.write_json("late.json", {}),
        lambda: s.create("late.lock", b"x"),
        lambda: s.delete("gone.bin"),
    ):
        with pytest.raises(SealedError, match="this worker was stopped"):
            write()
    assert sorted(os.listdir(tmp_path)) == ["gone.bin", "marker.bin"]
    assert Store(str(tmp_path)).create("late.lock", b"x")  # another Store on the same root still writes


def test_preflight_ok_and_leaves_nothing(tmp_path):
    s = Store(str(tmp_path / "new-root"))
    s.preflight()
    assert s.list() == []


def test_preflight_refuses_unwritable_local_root(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(StorageError, match="not writable"):
        Store(str(blocker / "root")).preflight()
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o555)
        with pytest.raises(StorageError, match="not writable"):
            Store(str(ro)).preflight()


def _closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def black_hole():
    """A loopback endpoint that accepts connections (the kernel's backlog) and never answers."""
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)  # never accept(): connections complete, requests are never read
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    srv.close()


@pytest.mark.s3
def test_preflight_refuses_unreachable_endpoint_quickly():
    t0 = time.perf_counter()
    with pytest.raises(StorageError, match="not writable.*(Connect|connect)") as e:
        Store("s3://some-bucket/x", {"endpoint_url": f"http://127.0.0.1:{_closed_port()}"}).preflight()
    assert time.perf_counter() - t0 < 10 and "\n" not in str(e.value)  # was 21-27 s (retries on retries)


@pytest.mark.s3
def test_preflight_gives_up_on_a_black_hole_and_an_unknown_host_within_10_s(black_hole, monkeypatch):
    import socket

    t0 = time.perf_counter()
    with pytest.raises(StorageError, match="results root s3://some-bucket/x") as e:
        Store("s3://some-bucket/x", {"endpoint_url": black_hole}).preflight()
    assert time.perf_counter() - t0 < 10 and "\n" not in str(e.value)  # was 65 s
    # an unknown host, without asking any resolver: the lookup fails as it would for a typo
    real = socket.getaddrinfo

    def lookup(host, *a, **k):
        if host == "bluff-no-such-host.invalid":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *a, **k)

    monkeypatch.setattr(socket, "getaddrinfo", lookup)
    t0 = time.perf_counter()
    with pytest.raises(StorageError, match="not writable") as e:
        Store("s3://some-bucket/x", {"endpoint_url": "http://bluff-no-such-host.invalid:9000"}).preflight()
    assert time.perf_counter() - t0 < 10 and "\n" not in str(e.value)
    # the run's own requests keep their patience: only the probe asks once
    fs = Store("s3://some-bucket/x", {"endpoint_url": black_hole}).fs
    assert fs.retries > 1 and fs.connect_timeout != 3


@pytest.mark.s3
def test_bluff_run_on_unreachable_storage_exits_2_with_one_line_within_10_s_of_a_normal_start(black_hole, tmp_path):
    """The CLI end to end (no Ray is started: the preflight comes first). Baseline: the same command
    failing at once on an unwritable local root, i.e. a normal start plus an instant preflight."""
    import subprocess
    import sys

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")

    # ``bluff run`` as the console script runs it, timed from main() on (interpreter start-up varies
    # by seconds on a loaded CI box; what main() does before failing is what is measured)
    script = (
        "import sys, time; from bluff_ray.cli import main; t = time.perf_counter(); rc = main(sys.argv[1:]); "
        "print(time.perf_counter() - t); sys.exit(rc)"
    )

    def bluff_run(out: str, *options: str) -> tuple[float, subprocess.CompletedProcess]:
        p = subprocess.run(
            [sys.executable, "-c", script, "run", "--out", out, "--no-progress", *options],
            capture_output=True,
            text=True,
            timeout=120,
        )
        return float(p.stdout.strip().splitlines()[-1]), p

    base, p = bluff_run(str(blocker / "root"))
    assert p.returncode == 2 and "not writable" in p.stderr, p.stderr
    for endpoint in (black_hole,):  # the slowest case (closed port and unknown host: see above)
        took, p = bluff_run("s3://some-bucket/x", "--storage-option", f"endpoint_url={endpoint}")
        lines = [line for line in p.stderr.splitlines() if line.strip()]
        assert p.returncode == 2 and len(lines) == 1 and "s3://some-bucket/x" in lines[0], p.stderr
        assert "Traceback" not in p.stderr + p.stdout
        assert took - base < 10, (endpoint, took, base)


@pytest.mark.s3
def test_s3_roundtrip_and_missing_bucket(s3_options, make_bucket):
    make_bucket("store-test")
    s = Store("s3://store-test/root", s3_options)
    s.preflight()
    t = pa.table({"target": pa.array([2, 2], pa.int32()), "x": [1.0, 2.0]})
    s.write_table("pairs/original=1/part-0.parquet", t)
    s.write_json("manifest.json", {"a": 1})
    s.refresh()
    assert s.list() == ["manifest.json", "pairs/original=1/part-0.parquet"]
    assert s.read_table("pairs/original=1/part-0.parquet").equals(t)
    with pytest.raises(StorageError, match="bucket does not exist"):
        Store("s3://no-such-bucket/root", s3_options).preflight()


def test_store_pickles_by_url_and_never_shows_options(tmp_path):
    s = Store(str(tmp_path), {"auto_mkdir": True})
    s2 = pickle.loads(pickle.dumps(s))
    assert s2.url == s.url and s2.storage_options == {"auto_mkdir": True}
    secret = Store("s3://b/x", {"key": "AKIA-SECRET", "secret": "s3cr3t"})
    assert "SECRET" not in repr(secret) and "s3cr3t" not in repr(secret)


def test_create_is_exclusive_locally(tmp_path):
    s = Store(str(tmp_path))
    assert s.create("x/lock.json", b"first") and not s.create("x/lock.json", b"second")
    assert s.read_bytes("x/lock.json") == b"first"
    assert sorted(os.listdir(tmp_path / "x")) == ["lock.json"]  # no temporary file left behind


@pytest.mark.s3
def test_create_is_exclusive_on_s3(s3_options, make_bucket):
    make_bucket("bluff-create")
    s = Store("s3://bluff-create/root", s3_options)
    assert s.create("lock.json", b"first") and not s.create("lock.json", b"second")
    assert s.read_bytes("lock.json") == b"first"


def test_read_many_keeps_order_and_runs_in_parallel(tmp_path):
    import threading
    import time

    s = Store(str(tmp_path))
    for i in range(40):
        s.write_bytes(f"u/{i}", str(i).encode())
    active, peak, lock = [0], [0], threading.Lock()

    def slow_read(rel):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.02)
        with lock:
            active[0] -= 1
        return s.read_bytes(rel)

    got = s.read_many([f"u/{i}" for i in range(40)], slow_read, concurrency=16)
    assert got == [str(i).encode() for i in range(40)]
    assert peak[0] >= 8


def test_run_lock_refuses_a_live_holder_and_takes_over_a_stale_one(tmp_path):
    import json

    from bluff_ray.results.lock import LockedError, RunLock

    s = Store(str(tmp_path))
    first = RunLock(s, "hash-a", heartbeat_s=0.05)
    first.acquire()
    try:
        with pytest.raises(LockedError, match="different configuration"):
            RunLock(s, "hash-b").acquire()
        with pytest.raises(LockedError, match="same configuration"):
            RunLock(s, "hash-a").acquire()
        held = json.loads(s.read_bytes(".bluff-lock.json"))
        assert held["run_id"] == first.run_id and held["config_hash"] == "hash-a"
    finally:
        first.release()
    assert not s.exists(".bluff-lock.json")
    # a lock whose heartbeat is old is taken over
    s.write_bytes(
        ".bluff-lock.json",
        json.dumps({"run_id": "x", "config_hash": "h", "host": "elsewhere", "pid": 1, "heartbeat": 0}).encode(),
    )
    late = RunLock(s, "hash-b")
    late.acquire()
    assert json.loads(s.read_bytes(".bluff-lock.json"))["run_id"] == late.run_id
    late.release()


def _garble_first_page(data: bytes, column: str) -> bytes:
    """``data`` with 16 bytes overwritten in the middle of ``column``'s first page (its dictionary of
    float32 values: snappy keeps such bytes as literals, so the garbage still decodes)."""
    import io

    import pyarrow.parquet as pq

    md = pq.ParquetFile(io.BytesIO(data)).metadata
    rg = md.row_group(0)
    col = next(rg.column(i) for i in range(rg.num_columns) if rg.column(i).path_in_schema == column)
    start = col.dictionary_page_offset or col.data_page_offset
    end = col.data_page_offset if col.dictionary_page_offset else start + col.total_compressed_size
    at = (start + end) // 2  # past the page header, inside the values
    return data[:at] + bytes(b ^ 0x5A for b in data[at : at + 16]) + data[at + 16 :]


def test_garbled_page_fails_the_checksum_with_the_file_named(tmp_path):
    import numpy as np
    import pyarrow.parquet as pq

    from bluff_ray.results.store import CorruptFile

    rng = np.random.default_rng(0)
    t = pa.table({"target": pa.array(np.zeros(4000, np.int32)), "v": rng.random(4000).astype(np.float32)})
    s = Store(str(tmp_path))
    s.write_table("edges/original=0/part-0.parquet", t)
    good = s.read_bytes("edges/original=0/part-0.parquet")
    bad = _garble_first_page(good, "v")
    assert len(bad) == len(good) and bad != good
    # without page checksums the same garbling decodes to wrong values silently (what this prevents)
    sink = pa.BufferOutputStream()
    pq.write_table(t, sink, compression="snappy")
    unchecked = pq.read_table(
        pa.BufferReader(_garble_first_page(sink.getvalue().to_pybytes(), "v")), page_checksum_verification=True
    )
    assert unchecked.num_rows == 4000 and not unchecked.equals(t)
    (tmp_path / "edges/original=0/part-0.parquet").write_bytes(bad)
    with pytest.raises(
        CorruptFile, match=r"edges/original=0/part-0\.parquet is not a readable Parquet file .*(CRC|checksum)"
    ):
        s.read_table("edges/original=0/part-0.parquet")
    with pytest.raises(CorruptFile, match="part-0.parquet"):
        s.read_parquet_file("edges/original=0/part-0.parquet").read()  # the open parses the footer, the read fails
    assert s.read_table("edges/original=0/part-0.parquet", columns=["target"]).num_rows == 4000


def test_corrupt_manifest_and_marker_are_one_line_errors_naming_the_file(tmp_path):
    from bluff_ray.results.store import CorruptFile

    s = Store(str(tmp_path))
    s.write_json("manifest.json", {"schema_version": 3, "strengths": [0.1, 0.2]})
    (tmp_path / "manifest.json").write_bytes((tmp_path / "manifest.json").read_bytes()[:20])  # truncated
    with pytest.raises(CorruptFile) as e:
        s.read_json("manifest.json")
    assert "manifest.json is not valid JSON" in str(e.value) and "\n" not in str(e.value)
    s.write_bytes("pairs/original=0/part-0.parquet", b"PAR1" + os.urandom(300) + b"PAR1")
    with pytest.raises(CorruptFile, match=r"pairs/original=0/part-0\.parquet is not a readable Parquet file") as e:
        s.read_parquet_file("pairs/original=0/part-0.parquet")
    assert "\n" not in str(e.value)
