"""Published only when complete, on a local disk and on a real S3-compatible server (moto's,
on 127.0.0.1): the marker comes last, readers refuse a folder without it, a failed job leaves
nothing that reads as complete, and what a killed job left is named."""

from __future__ import annotations

import os
import uuid

import pytest

from mammoray.core import storage

pytestmark = pytest.mark.unit


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path):
    if request.param == "local":
        return str(tmp_path)
    base = request.getfixturevalue("s3_env")
    return f"{base}/storage-{uuid.uuid4().hex[:8]}"


def names(folder: str) -> list[str]:
    return sorted(p[len(folder) + 1:] for p in storage.list_files(folder))


def test_a_staged_output_is_published_whole_with_its_marker_last(root):
    final = storage.join(root, "out")
    with storage.StagedOutput.create(final, overwrite=False) as staged:
        storage.write_bytes(staged.path("data", "a.bin"), b"a")
        storage.write_bytes(staged.path("meta.json"), b"{}")
        assert not storage.exists(final)  # nothing there while it is written
    assert names(final) == ["_COMPLETE", "data/a.bin", "meta.json"]
    assert storage.is_complete(final) and not storage.stale_partials(final)
    assert storage.read_bytes(storage.join(final, "data", "a.bin")) == b"a"
    with pytest.raises(FileExistsError, match=r"output .*out already exists; choose another "
                                              r"output or pass --overwrite"):
        storage.StagedOutput.create(final, overwrite=False)
    # Overwriting replaces the old output as a whole.
    with storage.StagedOutput.create(final, overwrite=True) as staged:
        storage.write_bytes(staged.path("meta.json"), b"{\"v\": 2}")
    assert names(final) == ["_COMPLETE", "meta.json"]


def test_a_failed_job_leaves_nothing_and_a_killed_one_is_named(root):
    final = storage.join(root, "out")
    with pytest.raises(RuntimeError):
        with storage.StagedOutput.create(final, overwrite=False) as staged:
            storage.write_bytes(staged.path("half.bin"), b"x")
            raise RuntimeError("the job failed")
    assert not storage.exists(final) and not storage.exists(staged.partial)
    # A killed job cannot discard: its partial folder stays, and the next job names it.
    killed = storage.StagedOutput.create(final, overwrite=False)
    storage.write_bytes(killed.path("half.bin"), b"x")
    notes: list[str] = []
    with storage.StagedOutput.create(final, overwrite=False, log=notes.append) as staged:
        storage.write_bytes(staged.path("whole.bin"), b"y")
    assert storage.stale_partials(final) == [killed.partial]
    assert len(notes) == 1 and killed.partial in notes[0] and "delete them" in notes[0]


def test_a_folder_without_its_marker_is_refused_on_object_storage(s3_env):
    final = f"{s3_env}/incomplete-{uuid.uuid4().hex[:8]}"
    storage.write_bytes(storage.join(final, "dataset.json"), b"{}")  # published up to here
    assert not storage.is_complete(final)
    with pytest.raises(storage.IncompleteOutput, match=r"--data .*: an incomplete dataset "
                                                       r"\(no _COMPLETE marker"):
        storage.require_complete(final, "--data", "dataset")
    with pytest.raises(FileExistsError, match="already exists but is incomplete"):
        storage.StagedOutput.create(final, overwrite=False)


def test_move_tree_moves_every_file(root):
    source, target = storage.join(root, "a"), storage.join(root, "b")
    for rel in ("x.bin", "sub/y.bin", "sub/deeper/z.bin"):
        storage.write_bytes(storage.join(source, rel), rel.encode())
    storage.move_tree(source, target)
    assert names(target) == ["sub/deeper/z.bin", "sub/y.bin", "x.bin"]
    assert not storage.exists(source)
    assert storage.read_bytes(storage.join(target, "sub", "y.bin")) == b"sub/y.bin"


def test_paths():
    assert storage.dirname("s3://b/x/y") == "s3://b/x" and storage.basename("s3://b/x/y") == "y"
    assert storage.join("s3://b/x/", "y", "z") == "s3://b/x/y/z"
    assert storage.dirname("/a/b") == "/a" and not storage.is_uri(os.sep + "a")
