"""pvmmap.criu.open(): the VMAs of a CRIU memory dump as pvmmap Mappings.

Each VMA becomes anonymous memory with the VMA's size (holes read as
zeros), the VMA's file mapped MAP_PRIVATE at its offset where the dump names
one that can still be opened (files.img), and every run of pages from
pages-N.img mapped MAP_PRIVATE straight from the image: pagemap entries are
whole pages, so their offsets in the pages file are page-aligned and no byte
is copied.  Runs adjacent in memory and in the file are one mmap.  Only a
pages file that cannot be mapped (a filesystem without mmap) is read into
the memory instead.  Then the VMA's protection is applied.

Writes to a writable Mapping stay private: the images never change.

lazy=True serves the runs of pages through pvmmap's userfaultfd server
instead (csrc/uffd.c, a file source): each run becomes anonymous memory
registered with userfaultfd, filled from pages-N.img (pread, UFFDIO_COPY)
on first touch or by populate().  The Mapping then holds no page cache of
the images and its pages are ordinary anonymous memory once present; a run
the pages file turns out too short for is poisoned (SIGBUS on touch,
Mapping.lost), never zeros.  Holes and the VMA's file are as without lazy.
"""

from __future__ import annotations

import errno
import os
import stat
from types import TracebackType
from typing import Any, Dict, List, Optional, Tuple, Type

from pvmmap import _features, _native
from pvmmap._contract import Part
from pvmmap.criu import images
from pvmmap.criu.images import (VMA_ANON_SHARED, VMA_AREA_MEMFD, VMA_AREA_SYSVIPC,
                                VMA_AREA_VDSO, VMA_AREA_VSYSCALL, VMA_AREA_VVAR,
                                VMA_FILE_PRIVATE, VMA_FILE_SHARED, ImageError, PageRun,
                                Vma)

RW = _native.PROT_READ | _native.PROT_WRITE


def kind_of(vma: Vma, dump: images.Dump) -> str:
    """The pvmmap.KINDS name of a dumped VMA, from its CRIU status."""
    st = vma.status
    if st & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL):
        return "special"
    if st & VMA_AREA_MEMFD:
        if st & VMA_FILE_PRIVATE:
            return "private-file"
        f = dump.files.get(vma.shmid, {})
        inode = dump.memfd_inodes.get(f.get("memfd", {}).get("inode_id", -1), {})
        return "shared-anon" if str(inode.get("name", "")).startswith("/dev/zero") \
            else "memfd"
    if st & VMA_ANON_SHARED:
        return "sysv-shm" if st & VMA_AREA_SYSVIPC else "shared-anon"
    if st & VMA_FILE_SHARED:
        return "shared-file"
    if st & VMA_FILE_PRIVATE:
        return "private-file"
    return "private-anon"


def _merged(runs: List[PageRun]) -> List[Tuple[int, str, int, int]]:
    """(vaddr, path, offset, length) of the present runs, neighbours in
    memory and in the same file joined."""
    out: List[Tuple[int, str, int, int]] = []
    for r in runs:
        if r.path is None or r.offset is None:
            continue            # not in this dump (parent or lazy): zeros
        n = r.nr_pages * images.PAGE_SIZE
        if out:
            v, p, o, length = out[-1]
            if p == r.path and v + length == r.vaddr and o + length == r.offset:
                out[-1] = (v, p, o, length + n)
                continue
        out.append((r.vaddr, r.path, r.offset, n))
    return out


class Image:
    """A CRIU dump's memory, opened: .vmas, .mapping(vma), .mappings().
    Closing it (or leaving its ``with`` block) closes every Mapping it
    made and the pages files."""

    def __init__(self, directory: str, pid: Optional[int] = None,
                 lazy: bool = False):
        self.directory = directory
        self.lazy = lazy
        self.dump = images.read_dump(directory, pid)
        self._fds: Dict[str, Tuple[int, int]] = {}       # path: (fd, size)
        self._made: List[_native.Mapping] = []
        self.closed = False

    @property
    def pid(self) -> int:
        return self.dump.pid

    @property
    def vmas(self) -> List[Vma]:
        return self.dump.vmas

    def _pages_fd(self, path: str) -> Tuple[int, int]:
        if path not in self._fds:
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                raise ImageError(f"{path}: missing") from None
            self._fds[path] = (fd, os.fstat(fd).st_size)
        return self._fds[path]

    def _file_of(self, vma: Vma) -> Optional[Tuple[int, str]]:
        """An fd of the regular file a file VMA maps, if files.img names one
        that still exists, with its path."""
        if not vma.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) or \
                vma.status & VMA_AREA_MEMFD:
            return None
        entry = self.dump.files.get(vma.shmid)
        if not entry or "reg" not in entry:
            return None
        path = entry["reg"]["name"]
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd, path

    def mapping(self, vma: Vma, *, lazy: Optional[bool] = None) -> _native.Mapping:
        """A Mapping holding `vma` as the dump has it (see the module's
        docstring).  Costs two mmaps, one per joined run of pages, and an
        mprotect: no byte is read until it is touched.  lazy: serve the runs
        through the userfaultfd server (default: as the Image was opened)."""
        if self.closed:
            raise ValueError("image closed")
        if lazy is None:
            lazy = self.lazy
        if vma not in self.dump.vmas:
            raise ValueError(f"VMA {vma.start:#x}-{vma.end:#x} is not in this dump")
        size = vma.size
        runs = _merged(self.dump.pages_of(vma))
        where = f"{self.directory}: VMA {vma.start:#x}-{vma.end:#x}"
        checked = []
        for vaddr, path, offset, length in runs:
            fd, fsize = self._pages_fd(path)
            if offset + length > fsize or offset % images.PAGE_SIZE:
                raise ImageError(f"{path}: {where} needs bytes {offset:#x}-"
                                 f"{offset + length:#x}, the file has {fsize:#x}")
            checked.append((vaddr - vma.start, fd, offset, length))
        if size > _features.task_size():
            raise ImageError(f"{self.directory}: VMA {vma.start:#x}-{vma.end:#x} is "
                             f"{size:#x} bytes, more than this machine's whole user "
                             f"address space ({_features.task_size():#x})")
        base = _native.mmap_raw(0, size, RW, _native.MAP_PRIVATE | _native.MAP_ANONYMOUS
                                | _native.MAP_NORESERVE,
                                what=f"mapping {where} of the image (no room for it "
                                f"in this process's address space?)")
        stats: Dict[str, Any] = {"image": self.directory, "mapped_runs": 0,
                                 "copied_bytes": 0, "file": None}
        m: Optional[_native.Mapping] = None
        served: List[_native.Lazy] = []
        try:
            backing = self._file_of(vma)
            if backing is not None:
                ffd, fpath = backing
                try:
                    fsize = os.fstat(ffd).st_size
                    # past the end of the file: zeros, not SIGBUS
                    inside = max(0, min(size, -(-(fsize - vma.pgoff) // images.PAGE_SIZE)
                                        * images.PAGE_SIZE))
                    if inside:
                        _native.mmap_raw(base, inside, RW, _native.MAP_PRIVATE
                                         | _native.MAP_FIXED, ffd, vma.pgoff,
                                         "mapping the VMA's file")
                    stats["file"] = fpath
                finally:
                    os.close(ffd)
            if lazy:
                for off, fd, offset, length in checked:
                    # anonymous again where the VMA's file was mapped: only
                    # anonymous memory can be registered
                    _native.mmap_raw(base + off, length, RW, _native.MAP_PRIVATE
                                     | _native.MAP_ANONYMOUS | _native.MAP_FIXED
                                     | _native.MAP_NORESERVE, -1, 0, "mapping a lazy run")
                    served.append(_native.Lazy(self.dump.pid, fd, -1, -1, offset,
                                               base + off, length, 0, _native.LAZY_FILE))
                stats["lazy_runs"] = len(served)
                checked = []
            kind = kind_of(vma, self.dump)
            m = _native.make_mapping(
                base, size, 0, size, pid=self.dump.pid, source_address=vma.start,
                method="image", kind=kind, prot=RW,
                parts=(Part(0, size, vma.start, kind, vma.prot, "image"),), stats=stats,
                lazy=tuple(served))
            for off, fd, offset, length in checked:
                try:
                    _native.mmap_raw(base + off, length, RW, _native.MAP_PRIVATE
                                     | _native.MAP_FIXED, fd, offset, "mapping pages")
                    stats["mapped_runs"] += 1
                except OSError as e:
                    if e.errno not in (errno.ENODEV, errno.EINVAL, errno.EACCES):
                        raise
                    with memoryview(m) as view:         # no mmap here: copy
                        got = os.preadv(fd, [view[off:off + length]], offset)
                    if got != length:
                        raise ImageError(f"{self.directory}: {got} of {length} bytes "
                                         f"at {offset:#x}") from None
                    stats["copied_bytes"] += length
            if vma.prot != RW:
                m.mprotect(vma.prot)
        except BaseException:
            if m is not None:
                m.close()
            else:
                for lz in served:       # unregister and stop serving first
                    lz.close()
                _native.munmap_raw(base, size)
            raise
        self._made.append(m)
        return m

    def mappings(self, *, lazy: Optional[bool] = None) -> List[_native.Mapping]:
        """One Mapping per VMA, in address order."""
        out: List[_native.Mapping] = []
        try:
            for vma in self.vmas:
                out.append(self.mapping(vma, lazy=lazy))
        except BaseException:
            for m in out:
                m.close()
            raise
        return out

    def close(self) -> None:
        """Close every Mapping this image made (BufferError while a
        memoryview over one is alive) and the pages files.  Idempotent."""
        while self._made:
            self._made[-1].close()
            self._made.pop()
        for fd, _ in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self.closed = True

    def __enter__(self) -> "Image":
        return self

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self.vmas)} VMAs"
        return f"<pvmmap.criu.Image {self.directory!r} pid {self.dump.pid}, {state}>"


def open(directory: "os.PathLike[str] | str", *, pid: Optional[int] = None,
         lazy: bool = False) -> Image:
    """Open the memory images of a CRIU dump (ours, CRIU 4.1's or 4.2's):
    pid defaults to pstree.img's first task.  Returns an Image whose
    .mapping(vma) / .mappings() give pvmmap.Mappings served from the images.
    Raises ImageError (a ValueError) for malformed or inconsistent images.
    lazy=True: Mappings served by the userfaultfd server (module docstring)."""
    return Image(os.fspath(directory), pid, lazy)
