"""Where matrices live: paths and fsspec URLs, opening Zarr groups, and guarding what a write replaces.

Every store argument of bigspec (a path, an ``os.PathLike``, an fsspec URL such as
``file:///data/K.zarr``, ``memory://K.zarr`` or ``s3://bucket/K.zarr``, or a ``zarr.Group``)
goes through :func:`open_group`, and every writer prepares its target with
:func:`prepare_target`, so that:

* local paths and ``file://`` / ``local://`` URLs are the same local directory (created as
  needed, like a path); other URLs go to fsspec with ``storage_options``;
* groups are opened without consolidated metadata, so bigspec always sees its own writes;
  a store that had consolidated metadata when it was opened (xarray writes it by default)
  gets it rewritten after bigspec writes (:func:`refresh_consolidated`), so readers that use
  it see them too;
* nothing a user owns is deleted unless they asked for it by name: a non-empty target that
  is not a bigspec store is refused unless ``overwrite=True`` (and then what is deleted is
  listed in an :class:`~bigspec.errors.OverwriteWarning` first), and a target that is, holds
  or lies inside the input being written is always refused.

Examples
--------
>>> from bigspec.storage import contents, locate, prepare_target
>>> locate("file:///data/run1/K.zarr").path          # a file:// URL is a local path
'/data/run1/K.zarr'
>>> g = prepare_target("memory://doc-storage.zarr", overwrite=True)
>>> g.attrs["note"] = "mine"                          # something that is not a bigspec store
>>> contents("memory://doc-storage.zarr").kind
'zarr'
>>> prepare_target("memory://doc-storage.zarr")       # doctest: +ELLIPSIS
Traceback (most recent call last):
...
bigspec.errors.StoreExistsError: memory://doc-storage.zarr already holds zarr data that is not a bigspec store ...
"""

from __future__ import annotations

import os
import posixpath
import warnings
from dataclasses import dataclass

import zarr

from .errors import OverwriteWarning, StoreExistsError

ATTRS_KEY = "bigspec"


@dataclass(frozen=True)
class Location:
    """A normalized store location: what zarr opens, and where it is for comparisons and messages."""

    target: object            # a local path (str), an fsspec URL (str) or a zarr.Group
    protocol: str | None      # "file" for local paths; None for a group
    path: str | None          # absolute local path, or the path inside the filesystem
    storage_options: dict | None

    @property
    def url(self) -> str:
        if self.protocol is None:
            return describe(self.target)
        return self.path if self.protocol == "file" else f"{self.protocol}://{self.path.lstrip('/')}"

    def filesystem(self):
        import fsspec

        if self.protocol == "file":
            return fsspec.filesystem("file")
        return fsspec.filesystem(self.protocol, **(self.storage_options or {}))


def locate(store, storage_options: dict | None = None) -> Location:
    """Normalize a path, PathLike, fsspec URL or zarr.Group into a :class:`Location`."""
    if isinstance(store, zarr.Group):
        return Location(store, None, None, None)
    if hasattr(store, "group") and isinstance(getattr(store, "group"), zarr.Group):  # a MatrixStore
        return Location(store.group, None, None, None)
    if isinstance(store, os.PathLike):
        store = os.fspath(store)
    if not isinstance(store, str):
        raise TypeError(
            f"a store must be a path, an fsspec URL (file://, s3://, memory://...) or a zarr.Group, "
            f"got {type(store).__name__}")
    if not store:
        raise ValueError("the store path is empty; give a path such as 'K.zarr'")
    if "://" in store or "::" in store:
        import fsspec
        from fsspec.implementations.local import LocalFileSystem

        fs, path = fsspec.core.url_to_fs(store, **(storage_options or {}))
        if isinstance(fs, LocalFileSystem):
            return Location(os.path.abspath(path), "file", os.path.abspath(path), None)
        protocol = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
        return Location(store, protocol, path, storage_options)
    path = os.path.abspath(os.path.expanduser(store))
    return Location(path, "file", path, None)


def open_group(store, mode: str = "r", storage_options: dict | None = None) -> zarr.Group:
    """Open the zarr group at ``store``, never through consolidated metadata.

    Consolidated metadata is a snapshot: read through it, a group created after the snapshot
    (``factor/``, say) is invisible and creating it again fails. bigspec reads the real
    metadata and refreshes the snapshot after writing (:func:`refresh_consolidated`).
    """
    loc = locate(store, storage_options)
    if loc.protocol is None:
        return loc.target
    if loc.protocol == "file":
        from zarr.storage import LocalStore

        return zarr.open_group(LocalStore(loc.path, read_only=mode == "r"), mode=mode, use_consolidated=False)
    return zarr.open_group(loc.target, mode=mode, storage_options=loc.storage_options, use_consolidated=False)


def has_consolidated(group: zarr.Group) -> bool:
    """Whether the group's stored metadata carries a consolidated snapshot of its children."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            snap = zarr.open_group(group.store, path=group.path, mode="r", use_consolidated=None)
        return snap.metadata.consolidated_metadata is not None
    except Exception:  # an unreadable snapshot is no snapshot
        return False


def refresh_consolidated(group: zarr.Group) -> None:
    """Rewrite the consolidated metadata of ``group`` (after bigspec wrote to it).

    Call it for a group that had consolidated metadata when it was opened: bigspec's own
    writes go through the real metadata, which drops the snapshot from the group's zarr.json.
    """
    if group.store.read_only:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zarr's note that consolidation is outside the v3 spec
        zarr.consolidate_metadata(group.store, path=group.path or None)


def describe(group: zarr.Group) -> str:
    """A readable location of a zarr group: a local path or a URL."""
    store = group.store
    root = getattr(store, "root", None) or getattr(store, "path", None) or ""
    fs = getattr(store, "fs", None)
    protocol = ""
    if fs is not None:
        proto = fs.protocol
        protocol = (proto[0] if isinstance(proto, (tuple, list)) else proto) + "://"
    path = str(root)
    if group.path:
        path = f"{path.rstrip('/')}/{group.path}"
    return protocol + path if protocol and not path.startswith(protocol) else path


def local_path(group: zarr.Group) -> str | None:
    """The local directory of a zarr group on a local file system, else None (a URL or memory)."""
    from zarr.storage import LocalStore

    store = group.store
    if not isinstance(store, LocalStore):
        return None
    root = str(store.root)
    return os.path.join(root, group.path) if group.path else root


# -- what a target holds ------------------------------------------------------------------

@dataclass(frozen=True)
class Contents:
    """What is at a target before a write."""

    kind: str          # "missing", "empty", "bigspec", "zarr", "other", "file"
    entries: tuple     # names of the entries found (for messages), at most 20
    count: int         # number of entries


def contents(store, storage_options: dict | None = None) -> Contents:
    """Look at ``store`` without changing it: missing, empty, a bigspec store, other zarr data, other files."""
    loc = locate(store, storage_options)
    if loc.protocol is None:
        group = loc.target
        names = sorted(group.keys())
        attrs = dict(group.attrs)
        if ATTRS_KEY in attrs:
            return Contents("bigspec", tuple(names[:20]), len(names))
        if names or attrs:
            shown = names or [f"attribute {k!r}" for k in sorted(attrs)]
            return Contents("zarr", tuple(shown[:20]), len(shown))
        return Contents("empty", (), 0)
    fs = loc.filesystem()
    path = loc.path
    if not fs.exists(path):
        return Contents("missing", (), 0)
    if not fs.isdir(path):
        return Contents("file", (posixpath.basename(path.rstrip("/")),), 1)
    names = sorted(posixpath.basename(p.rstrip("/")) + ("/" if fs.isdir(p) else "")
                   for p in fs.ls(path, detail=False) if p.rstrip("/") != path.rstrip("/"))
    if not names:
        return Contents("empty", (), 0)
    if "zarr.json" in names or ".zgroup" in names or ".zarray" in names:
        try:
            group = open_group(store, "r", storage_options)
            if ATTRS_KEY in group.attrs:
                return Contents("bigspec", tuple(names[:20]), len(names))
        except Exception:
            pass
        return Contents("zarr", tuple(names[:20]), len(names))
    return Contents("other", tuple(names[:20]), len(names))


def is_store(store, storage_options: dict | None = None) -> bool:
    """Whether ``store`` holds a bigspec matrix store."""
    try:
        return contents(store, storage_options).kind == "bigspec"
    except (OSError, ValueError, TypeError):
        return False


# -- guarding a write ---------------------------------------------------------------------

def source_location(obj) -> Location | None:
    """Where an input lives, if it lives in files: a .npy memmap, a zarr array or group, a path.

    Wrappers are looked through: a bigspec ``MatrixStore`` (its group), a validated
    ``Matrix`` (its store, origin or source) and the tile views (their zarr array).
    """
    if isinstance(obj, (str, os.PathLike)):
        return locate(obj)
    for attr in ("store", "origin", "source"):  # bigspec.matrix.Matrix
        if type(obj).__name__ == "Matrix" and getattr(obj, attr, None) is not None:
            found = source_location(getattr(obj, attr))
            if found is not None:
                return found
    for attr in ("group", "array"):  # MatrixStore, SymmetricView, TriangleView
        inner = getattr(obj, attr, None)
        if isinstance(inner, (zarr.Group, zarr.Array)):
            return source_location(inner)
    filename = getattr(obj, "filename", None)  # numpy.memmap
    if isinstance(filename, str):
        return locate(filename)
    store = getattr(obj, "store", None)
    if isinstance(obj, (zarr.Array, zarr.Group)) and store is not None:
        root = getattr(store, "root", None)
        inner = obj.path or ""
        if root is not None:  # LocalStore
            path = os.path.join(os.fspath(root), inner) if inner else os.fspath(root)
            return Location(path, "file", os.path.abspath(path), None)
        fs = getattr(store, "fs", None)
        if fs is not None:
            proto = fs.protocol[0] if isinstance(fs.protocol, (tuple, list)) else fs.protocol
            base = getattr(store, "path", "") or ""
            path = posixpath.join(base, inner) if inner else base
            if proto in ("file", "local"):
                return Location(path, "file", os.path.abspath(path), None)
            return Location(f"{proto}://{path}", proto, path, None)
    return None


def _nested(a: Location, b: Location) -> bool:
    """``a`` and ``b`` are the same place, or one lies inside the other."""
    if a.protocol is None or b.protocol is None or a.protocol != b.protocol:
        return False
    pa, pb = a.path.rstrip("/") + "/", b.path.rstrip("/") + "/"
    return pa.startswith(pb) or pb.startswith(pa)


def check_not_input(target: Location, inputs, what: str = "store") -> None:
    """Refuse a target that is, holds or lies inside one of the inputs (writing would destroy it)."""
    for obj in inputs:
        src = source_location(obj) if not isinstance(obj, Location) else obj
        if src is not None and _nested(target, src):
            inside = (target.path.rstrip("/") + "/").startswith(src.path.rstrip("/") + "/")
            raise StoreExistsError(
                f"the {what} {target.url} would overwrite the input {src.url} (one is, holds or lies "
                f"inside the other); write the {what} to a separate path, e.g. "
                f"{_sibling(src if inside else target)}", store=target.url, input=src.url)


def _sibling(loc: Location) -> str:
    base = loc.url.rstrip("/")
    parent, name = posixpath.split(base)
    stem = name[:-5] if name.endswith(".zarr") else name
    return posixpath.join(parent, f"{stem}-bigspec.zarr")


def prepare_target(store, *, overwrite: bool = False, storage_options: dict | None = None,
                   inputs=(), what: str = "store", flag: str | None = None, dry_run: bool = False) -> zarr.Group:
    """An empty zarr group at ``store``, ready for a new matrix store.

    A missing or empty target is created. A bigspec store, other zarr data or other files
    are replaced only with ``overwrite=True``, and then listed in an
    :class:`~bigspec.errors.OverwriteWarning` before they are deleted. A target
    that is, holds or lies inside one of ``inputs`` is refused whatever ``overwrite`` says.
    ``dry_run``: only the checks (the same errors); nothing is deleted or created, None is returned.

    Raises
    ------
    StoreExistsError
        The target holds something and ``overwrite`` was not given, it is a file, or it
        would overwrite an input.
    """
    from .validate import check_flag

    overwrite = check_flag(overwrite, "overwrite")
    if flag is None:
        from .errors import arg

        flag = arg("overwrite", True)
    loc = locate(store, storage_options)
    check_not_input(loc, inputs, what)
    found = contents(store, storage_options)
    if found.kind == "file":
        raise StoreExistsError(f"{loc.url} is a file, not a directory; choose a path for the new {what}, "
                               f"e.g. {_sibling(loc)}", store=loc.url)
    if found.kind in ("bigspec", "zarr", "other"):
        listing = ", ".join(found.entries) + (f" ... ({found.count} entries)" if found.count > len(found.entries) else "")
        if not overwrite:
            what_is = {"bigspec": "a bigspec matrix store", "zarr": "zarr data that is not a bigspec store",
                       "other": "files that are not a bigspec store"}[found.kind]
            raise StoreExistsError(
                f"{loc.url} already holds {what_is} ({listing}); choose a new path such as "
                f"{_sibling(loc) if found.kind == 'bigspec' else posixpath.join(loc.url.rstrip('/'), 'K.zarr')}"
                f", or pass {flag} to delete {'it' if found.kind == 'bigspec' else 'all of it'} and write there",
                store=loc.url, kind=found.kind)
        if dry_run:
            return None
        what_is = "the bigspec store" if found.kind == "bigspec" else "what is not a bigspec store"
        warnings.warn(f"{flag}: deleting {found.count} entr{'y' if found.count == 1 else 'ies'} at "
                      f"{loc.url}, {what_is}: {listing}", OverwriteWarning, stacklevel=3)
        _delete(loc)
    if dry_run:
        return None
    if loc.protocol is None:
        return loc.target
    return open_group(store, "w", storage_options)


def _delete(loc: Location) -> None:
    if loc.protocol is None:
        group = loc.target
        for name in list(group.keys()):
            del group[name]
        for key in list(group.attrs.keys()):
            del group.attrs[key]
        return
    loc.filesystem().rm(loc.path, recursive=True)


__all__ = ["Location", "locate", "open_group", "refresh_consolidated", "has_consolidated", "contents",
           "is_store", "prepare_target", "check_not_input", "source_location", "describe"]


# -- chunk accounting ---------------------------------------------------------------------

def chunk_grid(array: zarr.Array) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(stored object shape, grid shape): shards when the array is sharded, else chunks."""
    block = tuple(array.shards) if getattr(array, "shards", None) else tuple(array.chunks)
    grid = tuple(-(-s // c) for s, c in zip(array.shape, block))
    return block, grid


def initialized_chunks(array: zarr.Array, coords=None) -> set[tuple[int, ...]]:
    """The chunk (or shard) coordinates among ``coords`` (default: all) that exist in storage.

    One listing of the array's keys; keys come from the array's own chunk key encoding, so
    ``c/1/2``, ``1.2`` and ``1/2`` layouts are all understood. A chunk that was never written
    reads as the fill value.
    """
    import itertools

    from zarr.core.sync import sync

    prefix = f"{array.path}/" if array.path else ""

    async def _list():
        return [k async for k in array.store.list_prefix(prefix)]

    keys = {k[len(prefix):] for k in sync(_list())}
    if coords is None:
        _, grid = chunk_grid(array)
        coords = itertools.product(*(range(g) for g in grid))
    encode = array.metadata.encode_chunk_key
    return {tuple(c) for c in coords if encode(tuple(c)) in keys}
