"""Local paths and object-storage URIs (``s3://``, ``gs://``) through pyarrow filesystems, and
outputs published only when complete.

A job writes its output folder aside, as ``<output>.partial-<id>``, and publishes it when
complete (:class:`StagedOutput`):

- on a local disk by renaming the folder into place (atomic);
- on an object store, which cannot rename a folder, by moving its files one by one (a
  server-side copy each) and then writing the marker ``<output>/_COMPLETE`` last.

Every folder the platform publishes holds the marker. A reader (:func:`require_complete`)
takes an object-store folder only with its marker, so a half-published output, or one whose
job was killed while publishing, never reads as complete; a local folder is complete once it
exists (its rename was atomic). A failed job removes its partial folder; a killed one leaves it
(``<output>.partial-<id>``), and the next job writing there names it for cleaning.

S3-compatible stores (MinIO, Ceph) work through the standard variables: pyarrow reads
``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` and
``AWS_DEFAULT_REGION``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow.fs as pafs

from mammoray.core import faults

COMPLETE_MARKER = "_COMPLETE"
PARTIAL = ".partial-"


def is_uri(path: str) -> bool:
    return "://" in path


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI such as ``s3://bucket/x``."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(path))


def normalize(path: str) -> str:
    """Absolute local path, or the URI unchanged (what workers on other nodes can open)."""
    return path if is_uri(path) else os.path.abspath(os.path.expanduser(path))


def _uri_of(template: str, inner: str) -> str:
    """A path inside ``template``'s filesystem as the same kind of path (``s3://`` + inner)."""
    return template.split("://", 1)[0] + "://" + inner if is_uri(template) else inner


def read_bytes(path: str) -> bytes:
    fs, inner = resolve(path)
    # A random-access file reads in one call; an input stream reads through a buffer (much
    # slower on a full-field mammogram).
    with fs.open_input_file(inner) as fh:
        return fh.read()


def open_input(path: str):
    """A seekable binary file object (reads only what the caller asks for)."""
    fs, inner = resolve(path)
    return fs.open_input_file(inner)


def exists(path: str) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def is_dir(path: str) -> bool:
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type == pafs.FileType.Directory


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts]) if is_uri(base) else os.path.join(base, *parts)


def dirname(path: str) -> str:
    """The folder holding ``path`` (local or URI)."""
    if is_uri(path):
        scheme, inner = path.split("://", 1)
        return f"{scheme}://{inner.rstrip('/').rsplit('/', 1)[0]}"
    return os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
    return path.rstrip("/").rsplit("/", 1)[-1] if is_uri(path) else os.path.basename(path)


def list_files(root: str) -> list[str]:
    """Every file below ``root`` (recursive), as paths/URIs of the same form, sorted."""
    fs, inner = resolve(root)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    return sorted(_uri_of(root, i.path) for i in infos if i.type == pafs.FileType.File)


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file. Locally the parent folders are created and the file appears
    complete or not at all (written aside, then renamed); object stores put atomically."""
    if not is_uri(path):
        path = os.path.abspath(os.path.expanduser(path))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}{PARTIAL}{uuid.uuid4().hex[:8]}"
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    fs, inner = resolve(path)
    with fs.open_output_stream(inner) as fh:
        fh.write(data)


def delete(path: str) -> None:
    """Remove a file or a folder tree; nothing when it does not exist."""
    fs, inner = resolve(path)
    kind = fs.get_file_info(inner).type
    if kind == pafs.FileType.Directory:
        fs.delete_dir(inner)
    elif kind == pafs.FileType.File:
        fs.delete_file(inner)


def move_tree(source: str, target: str) -> None:
    """Move a folder to ``target`` (which must not exist): a rename on a local disk, one
    server-side move per file on an object store (which cannot move a folder)."""
    fs, src = resolve(source)
    _, dst = resolve(target)
    if not is_uri(source):
        fs.move(src, dst)
        return
    for info in fs.get_file_info(pafs.FileSelector(src, recursive=True)):
        if info.type == pafs.FileType.File:
            rel = info.path[len(src.rstrip("/")) + 1:]
            fs.move(info.path, f"{dst}/{rel}")
    fs.delete_dir(src)


def copy_local_tree(folder: str, target: str) -> None:
    """Copy a local folder's files to ``target`` (a local path or a URI)."""
    if not is_uri(target):
        shutil.copytree(folder, target, dirs_exist_ok=True)
        return
    fs, dst = resolve(target)
    pafs.copy_files(folder, dst, source_filesystem=pafs.LocalFileSystem(),
                    destination_filesystem=fs)


def is_complete(path: str) -> bool:
    """Whether a published folder is complete: its marker on an object store; on a local disk
    its existence (it was renamed into place whole)."""
    if is_uri(path):
        return exists(join(path, COMPLETE_MARKER))
    return os.path.isdir(normalize(path))


def require_complete(path: str, flag: str, what: str) -> None:
    """Stop with a clear error unless ``path`` is a complete published folder."""
    if not exists(path):
        return  # the caller's own "not found" check names what is missing
    if not is_complete(path):
        raise IncompleteOutput(f"{flag} {path}: an incomplete {what} (no {COMPLETE_MARKER} "
                               "marker: its job failed or was killed while publishing it); "
                               "delete it and run that job again")


class IncompleteOutput(FileExistsError):
    """A folder that is there but was never completely published."""


def stale_partials(final: str) -> list[str]:
    """``<final>.partial-*`` folders beside ``final``: what jobs that were killed left."""
    parent, name = dirname(final), basename(final)
    fs, inner = resolve(parent)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    return sorted(_uri_of(final, i.path)
                  for i in fs.get_file_info(pafs.FileSelector(inner, allow_not_found=True))
                  if i.base_name.startswith(name + PARTIAL))


@dataclass(frozen=True)
class StagedOutput:
    """A partial output folder beside ``final``; :meth:`commit` publishes it (see the module's
    docstring). As a context manager (``with StagedOutput.create(...) as staged:``) it commits
    when the block ends normally and discards the partial folder when the block raises (Ctrl+C
    included)."""

    final: str
    partial: str

    @classmethod
    def create(cls, final: str, *, overwrite: bool,
               log: Callable[[str], None] | None = None) -> "StagedOutput":
        final = normalize(final).rstrip("/")
        if exists(final) and not overwrite:
            state = "" if is_complete(final) else (
                " but is incomplete (its job failed or was killed while publishing it)")
            raise FileExistsError(f"output {final} already exists{state}; choose another "
                                  f"output or pass --overwrite")
        left = stale_partials(final)
        if left and log is not None:
            log(f"note: {len(left)} partial output(s) of earlier runs that did not finish are "
                f"left beside the output; delete them: {', '.join(left)}")
        partial = f"{final}{PARTIAL}{uuid.uuid4().hex[:8]}"
        fs, inner = resolve(partial)
        fs.create_dir(inner, recursive=True)
        return cls(final=final, partial=partial)

    def path(self, *parts: str) -> str:
        return join(self.partial, *parts)

    def __enter__(self) -> "StagedOutput":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.discard()

    def commit(self) -> None:
        if not is_uri(self.final):
            write_bytes(self.path(COMPLETE_MARKER), b"")
            fs, final = resolve(self.final)
            _, partial = resolve(self.partial)
            if fs.get_file_info(final).type != pafs.FileType.NotFound:
                old = f"{final}.old-{uuid.uuid4().hex[:8]}"
                fs.move(final, old)
                fs.move(partial, final)
                fs.delete_dir(old)
            else:
                fs.move(partial, final)
            return
        # An object store: the old output stops reading as complete first, the marker of the
        # new one comes last.
        delete(join(self.final, COMPLETE_MARKER))
        delete(self.final)
        move_tree(self.partial, self.final)
        faults.fire(faults.from_env(), "storage.publish", final=basename(self.final))
        write_bytes(join(self.final, COMPLETE_MARKER), b"")

    def discard(self) -> None:
        delete(self.partial)
