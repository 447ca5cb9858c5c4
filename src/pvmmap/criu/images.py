"""CRIU image codec: the images a memory dump is made of.

Framing (CRIU's criu/include/magic.h, criu/image.c): every image but
``inventory.img`` and the raw ``pages-N.img`` starts with IMG_COMMON_MAGIC and
then its own magic (u32 little-endian each); ``inventory.img`` has only its own
magic; then come entries, each a u32 little-endian length followed by one
protobuf (proto2) message.  ``pages-N.img`` is raw pages with no header.

Messages covered (field numbers from CRIU's images/*.proto): inventory_entry
(+ task_kobj_ids_entry, plugins_entry), pstree_entry, mm_entry (+ vma_entry,
aio_ring_entry), pagemap_head / pagemap_entry, file_entry with its reg and memfd
members (+ fown_entry), memfd_inode_entry.  Fields of other file types are
skipped on reading, as protobuf skips any unknown field.

pagemap_entry.nr_pages: CRIU <= 4.1 has it as field 2 (uint32, required);
CRIU >= 4.2 (upstream afb2e6c3f) calls field 2 ``compat_nr_pages``, writes 0
there and the count in field 5 (uint64).  We read field 5 when present, else
field 2 (CRIU 4.2 does the same), and write the count in both, so Debian's crit
3.17 and CRIU 4.1 (field 2) and CRIU 4.2 (field 5) all see it.

Codec decision: a small hand-written varint codec, not the protobuf package.
Measured here with benchmarks/criu_codec.py (encode + decode of each image,
best of 5, on 2 vCPUs shared with other jobs, so +-40%):

=============================  ==========  ==============  ==============
image                          this codec  protobuf 7.36   protobuf 4.21
                                           upb (pip)       cpp (Debian 12)
=============================  ==========  ==============  ==============
pagemap, 262144 x 1 page       2.07 s      0.85 s          1.56 s
pagemap, 1024 x 256 pages      7.6 ms      2.7 ms          5.5 ms
mm-PID.img, 14 VMAs (fixture)  0.63 ms     0.06 ms         0.14 ms
mm-PID.img, 65530 VMAs         1.75 s      0.22 s          0.41 s
=============================  ==========  ==============  ==============

262144 one-page entries is a 1 GiB dump at its worst (every other page
touched); CRIU writes a fully touched 1 GiB as about 1024 entries (it splits
at its page-pipe buffers), and 65530 is vm.max_map_count.  protobuf is 2.5 to
10 times faster per message, but in absolute terms the realistic cases cost
milliseconds either way, and the worst cases cost about what moving the 1 GiB
of pages costs anyway (a first-touch fault is 3-4 us per page here).  Against
that: protobuf would be a new dependency (Debian's own build, the one an apt
user has, is only 1.2-1.6 times faster on pagemaps), it needs the .proto
schemas or generated code shipped, and it gives neither CRIU's framing nor the
field 2/5 rule nor errors naming the file.  So: stdlib only, with a fast
path for pagemap entries.

Every malformed input raises ImageError (a ValueError), with the file and what
is wrong in its message.
"""

from __future__ import annotations

import bisect
import mmap
import os
import re
import struct
from dataclasses import dataclass, field
from typing import (Any, BinaryIO, Callable, Dict, Iterable, Iterator, List, Mapping,
                    NamedTuple, Optional, Sequence, Tuple, Union)

#: What the decoders read from: any bytes-like object.
Buffer = Union[bytes, bytearray, memoryview, mmap.mmap]

__all__ = [
    "ImageError", "PAGE_SIZE", "Vma", "Mm", "PageRun", "Pagemap", "Dump",
    "read_dump", "decode_image", "encode_image", "encode_mm", "encode_pagemap",
    "write_pagemap", "write_dump", "check_pagemap", "KINDS",
]

PAGE_SIZE = mmap.PAGESIZE   # CRIU writes host pages; a dump is read on its own arch


class ImageError(ValueError):
    """A CRIU image is malformed, truncated, or inconsistent with the others."""


# -- magics (criu/include/magic.h) -------------------------------------------

IMG_COMMON_MAGIC = 0x54564319
IMG_SERVICE_MAGIC = 0x55105940
INVENTORY_MAGIC = 0x58313116
PSTREE_MAGIC = 0x50273030
PAGEMAP_MAGIC = 0x56084025      # also pagemap-shmem-ID.img
MM_MAGIC = 0x57492820
FILES_MAGIC = 0x56303138
MEMFD_INODE_MAGIC = 0x48453499

# inventory_entry.img_version CRIU writes and accepts (CRTOOLS_IMAGES_V1_1)
IMG_VERSION = 2

# pagemap_entry.flags (criu/include/pagemap.h)
PE_PARENT = 1 << 0      # pages are in the parent snapshot
PE_LAZY = 1 << 1        # pages may be restored lazily
PE_PRESENT = 1 << 2     # pages are in this dump's pages-N.img

# vma_entry.status (criu/include/image.h)
VMA_AREA_REGULAR = 1 << 0
VMA_AREA_STACK = 1 << 1
VMA_AREA_VSYSCALL = 1 << 2
VMA_AREA_VDSO = 1 << 3
VMA_AREA_HEAP = 1 << 5
VMA_FILE_PRIVATE = 1 << 6
VMA_FILE_SHARED = 1 << 7
VMA_ANON_SHARED = 1 << 8
VMA_ANON_PRIVATE = 1 << 9
VMA_AREA_SYSVIPC = 1 << 10
VMA_AREA_SOCKET = 1 << 11
VMA_AREA_VVAR = 1 << 12
VMA_AREA_AIORING = 1 << 13
VMA_AREA_MEMFD = 1 << 14

# what a vma_entry may hold: PROT_READ|PROT_WRITE|PROT_EXEC, an address below
# 2^56 (x86_64 with 5-level page tables: the largest user address space Linux
# has) but for the vsyscall page, a file offset that fits off_t
PROT_MASK = 0x7
USER_END = 1 << 56
OFF_MAX = (1 << 63) - 1

# file_entry.type (images/fdinfo.proto, enum fd_types)
FD_TYPE_REG = 1
FD_TYPE_MEMFD = 18

_U32 = struct.Struct("<I")
_U64_MASK = (1 << 64) - 1

# -- schemas ------------------------------------------------------------------
#
# A field is (number, name, kind, label).  kind: "u" unsigned varint (uint32,
# uint64, enums), "i" two's-complement varint (int32/int64), "s" zigzag varint
# (sint32/sint64), "b" bool, "str", "bytes", or a _Message.  label: "req",
# "opt", "rep".

_REQ, _OPT, _REP = "req", "opt", "rep"
_VARINT_KINDS = frozenset("uisb")


class _Message:
    def __init__(self, name: str, fields: Sequence[Tuple[int, str, Any, str]]):
        self.name = name
        self.fields = tuple(sorted(fields))
        self.by_number = {f[0]: f for f in self.fields}
        self.required = tuple(f[1] for f in self.fields if f[3] == _REQ)


_PAGEMAP_HEAD = _Message("pagemap_head", [(1, "pages_id", "u", _REQ)])
_PAGEMAP_ENTRY = _Message("pagemap_entry", [
    (1, "vaddr", "u", _REQ), (2, "compat_nr_pages", "u", _REQ),
    (3, "in_parent", "b", _OPT), (4, "flags", "u", _OPT), (5, "nr_pages", "u", _OPT)])
_VMA_ENTRY = _Message("vma_entry", [
    (1, "start", "u", _REQ), (2, "end", "u", _REQ), (3, "pgoff", "u", _REQ),
    (4, "shmid", "u", _REQ), (5, "prot", "u", _REQ), (6, "flags", "u", _REQ),
    (7, "status", "u", _REQ), (8, "fd", "s", _REQ), (9, "madv", "u", _OPT),
    (10, "fdflags", "u", _OPT)])
_AIO_RING_ENTRY = _Message("aio_ring_entry", [
    (1, "id", "u", _REQ), (2, "nr_req", "u", _REQ), (3, "ring_len", "u", _REQ)])
_MM_FIELDS = ("mm_start_code", "mm_end_code", "mm_start_data", "mm_end_data",
              "mm_start_stack", "mm_start_brk", "mm_brk", "mm_arg_start",
              "mm_arg_end", "mm_env_start", "mm_env_end")
_MM_ENTRY = _Message("mm_entry", [
    *((i + 1, name, "u", _REQ) for i, name in enumerate(_MM_FIELDS)),
    (12, "exe_file_id", "u", _REQ), (13, "mm_saved_auxv", "u", _REP),
    (14, "vmas", _VMA_ENTRY, _REP), (15, "dumpable", "i", _OPT),
    (16, "aios", _AIO_RING_ENTRY, _REP), (17, "thp_disabled", "b", _OPT)])
_FOWN_ENTRY = _Message("fown_entry", [
    (1, "uid", "u", _REQ), (2, "euid", "u", _REQ), (3, "signum", "u", _REQ),
    (4, "pid_type", "u", _REQ), (5, "pid", "u", _REQ)])
_REG_FILE_ENTRY = _Message("reg_file_entry", [
    (1, "id", "u", _REQ), (2, "flags", "u", _REQ), (3, "pos", "u", _REQ),
    (5, "fown", _FOWN_ENTRY, _REQ), (6, "name", "str", _REQ),
    (7, "mnt_id", "s", _OPT), (8, "size", "u", _OPT), (9, "ext", "b", _OPT),
    (10, "mode", "u", _OPT), (11, "build_id", "u", _REP), (12, "checksum", "u", _OPT),
    (13, "checksum_config", "u", _OPT), (14, "checksum_parameter", "u", _OPT)])
_MEMFD_FILE_ENTRY = _Message("memfd_file_entry", [
    (1, "id", "u", _REQ), (2, "flags", "u", _REQ), (3, "pos", "u", _REQ),
    (4, "fown", _FOWN_ENTRY, _REQ), (5, "inode_id", "u", _REQ)])
_FILE_ENTRY = _Message("file_entry", [
    (1, "type", "u", _REQ), (2, "id", "u", _REQ),
    (3, "reg", _REG_FILE_ENTRY, _OPT), (20, "memfd", _MEMFD_FILE_ENTRY, _OPT)])
_MEMFD_INODE_ENTRY = _Message("memfd_inode_entry", [
    (1, "name", "str", _REQ), (2, "uid", "u", _REQ), (3, "gid", "u", _REQ),
    (4, "size", "u", _REQ), (5, "shmid", "u", _REQ), (6, "seals", "u", _REQ),
    (7, "inode_id", "u", _REQ), (8, "hugetlb_flag", "u", _OPT), (9, "mode", "u", _OPT)])
_TASK_KOBJ_IDS_ENTRY = _Message("task_kobj_ids_entry", [
    (1, "vm_id", "u", _REQ), (2, "files_id", "u", _REQ), (3, "fs_id", "u", _REQ),
    (4, "sighand_id", "u", _REQ), (5, "pid_ns_id", "u", _OPT), (6, "net_ns_id", "u", _OPT),
    (7, "ipc_ns_id", "u", _OPT), (8, "uts_ns_id", "u", _OPT), (9, "mnt_ns_id", "u", _OPT),
    (10, "user_ns_id", "u", _OPT), (11, "cgroup_ns_id", "u", _OPT),
    (12, "time_ns_id", "u", _OPT)])
_PLUGINS_ENTRY = _Message("plugins_entry", [(12, "plugins", "str", _REP)])
_INVENTORY_ENTRY = _Message("inventory_entry", [
    (1, "img_version", "u", _REQ), (2, "fdinfo_per_id", "b", _OPT),
    (3, "root_ids", _TASK_KOBJ_IDS_ENTRY, _OPT), (4, "ns_per_id", "b", _OPT),
    (5, "root_cg_set", "u", _OPT), (6, "lsmtype", "u", _OPT), (8, "dump_uptime", "u", _OPT),
    (9, "pre_dump_mode", "u", _OPT), (10, "tcp_close", "b", _OPT),
    (11, "network_lock_method", "u", _OPT), (12, "plugins_entry", _PLUGINS_ENTRY, _OPT),
    (13, "dump_criu_run_id", "str", _OPT), (14, "allow_uprobes", "b", _OPT)])
_PSTREE_ENTRY = _Message("pstree_entry", [
    (1, "pid", "u", _REQ), (2, "ppid", "u", _REQ), (3, "pgid", "u", _REQ),
    (4, "sid", "u", _REQ), (5, "threads", "u", _REP)])


class _Kind(NamedTuple):
    magic: int
    common: bool                     # preceded by IMG_COMMON_MAGIC
    entry: _Message
    head: Optional[_Message] = None  # a different first entry (pagemap_head)


#: image kinds this module reads and writes, by CRIU's image name
KINDS: Dict[str, _Kind] = {
    "inventory": _Kind(INVENTORY_MAGIC, False, _INVENTORY_ENTRY),
    "pstree": _Kind(PSTREE_MAGIC, True, _PSTREE_ENTRY),
    "mm": _Kind(MM_MAGIC, True, _MM_ENTRY),
    "pagemap": _Kind(PAGEMAP_MAGIC, True, _PAGEMAP_ENTRY, _PAGEMAP_HEAD),
    "files": _Kind(FILES_MAGIC, True, _FILE_ENTRY),
    "memfd": _Kind(MEMFD_INODE_MAGIC, True, _MEMFD_INODE_ENTRY),
}

# -- decoding -------------------------------------------------------------------


def _varint(buf: Buffer, pos: int, end: int, what: str) -> Tuple[int, int]:
    """Return (value, position after it); ImageError if it runs past end."""
    value = shift = 0
    start = pos
    while True:
        if pos >= end:
            raise ImageError(f"{what}: varint at offset {start} runs past the end of its message")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7
        if shift >= 70:
            raise ImageError(f"{what}: varint at offset {start} is longer than 10 bytes")


def _decode_message(msg: _Message, buf: Buffer, pos: int, end: int, what: str) -> Dict[str, Any]:
    """Decode buf[pos:end] as one msg; unknown fields are skipped."""
    out: Dict[str, Any] = {}
    by_number = msg.by_number
    value: Any
    while pos < end:
        b = buf[pos]
        if b < 0x80:
            tag = b
            pos += 1
        else:
            tag, pos = _varint(buf, pos, end, what)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise ImageError(f"{what}: {msg.name} has a field number 0 (corrupt entry)")
        if wire == 0:
            if pos < end and buf[pos] < 0x80:
                value = buf[pos]
                pos += 1
            else:
                value, pos = _varint(buf, pos, end, what)
        elif wire == 2:
            n, pos = _varint(buf, pos, end, what)
            if n > end - pos:
                raise ImageError(f"{what}: {msg.name} field {number} needs {n} bytes, "
                                 f"{end - pos} left in the message (truncated?)")
            value = (pos, pos + n)
            pos += n
        elif wire == 1 or wire == 5:
            n = 8 if wire == 1 else 4
            if n > end - pos:
                raise ImageError(f"{what}: {msg.name} field {number} needs {n} bytes, "
                                 f"{end - pos} left in the message (truncated?)")
            value = int.from_bytes(buf[pos:pos + n], "little")
            pos += n
        else:
            raise ImageError(f"{what}: {msg.name} field {number} has wire type {wire}, "
                             f"which CRIU images never use (corrupt entry?)")
        f = by_number.get(number)
        if f is None:
            continue
        _, name, kind, label = f
        if isinstance(kind, _Message):
            if wire != 2:
                raise _wire_error(what, msg, f, wire)
            value = _decode_message(kind, buf, value[0], value[1], what)
        elif kind in _VARINT_KINDS:
            if wire == 2 and label == _REP:            # packed repeated varints
                p, e = value
                items = []
                while p < e:
                    v, p = _varint(buf, p, e, what)
                    items.append(_scalar(kind, v))
                out.setdefault(name, []).extend(items)
                continue
            if wire != 0:
                raise _wire_error(what, msg, f, wire)
            value = _scalar(kind, value)
        else:
            if wire != 2:
                raise _wire_error(what, msg, f, wire)
            raw = bytes(buf[value[0]:value[1]])
            if kind == "str":
                try:
                    value = raw.decode("utf-8")
                except UnicodeDecodeError:
                    raise ImageError(f"{what}: {msg.name}.{name} is not UTF-8") from None
            else:
                value = raw
        if label == _REP:
            out.setdefault(name, []).append(value)
        else:
            out[name] = value
    if pos != end:
        raise ImageError(f"{what}: {msg.name} runs past its length")
    for name in msg.required:
        if name not in out:
            raise ImageError(f"{what}: {msg.name} lacks its required field {name!r}")
    return out


def _scalar(kind: str, v: int) -> Any:
    if kind == "u":
        return v
    if kind == "b":
        return v != 0
    if kind == "s":
        return (v >> 1) ^ -(v & 1)
    return v - (1 << 64) if v >= 1 << 63 else v          # "i"


def _wire_error(what: str, msg: _Message, f: Tuple[Any, ...], wire: int) -> ImageError:
    kind = f[2].name if isinstance(f[2], _Message) else f[2]
    return ImageError(f"{what}: {msg.name}.{f[1]} (field {f[0]}, {kind}) arrives with "
                      f"wire type {wire}: not the type CRIU's schema gives it")


def _frame_entries(data: Buffer, kind: _Kind, what: str) -> Iterator[Tuple[int, int, int]]:
    """Check the magics and yield (index, start, end) of each entry's message."""
    size = len(data)
    pos = 0
    if kind.common:
        if size < 4:
            raise ImageError(f"{what}: {size} bytes, too short for its magic")
        head = _U32.unpack_from(data, 0)[0]
        if head != IMG_COMMON_MAGIC:
            extra = " (a service image)" if head == IMG_SERVICE_MAGIC else ""
            raise ImageError(f"{what}: first magic {head:#010x}{extra}, "
                             f"expected IMG_COMMON_MAGIC {IMG_COMMON_MAGIC:#010x}")
        pos = 4
    if size - pos < 4:
        raise ImageError(f"{what}: {size} bytes, too short for its magic")
    magic = _U32.unpack_from(data, pos)[0]
    if magic != kind.magic:
        raise ImageError(f"{what}: magic {magic:#010x}, expected {kind.magic:#010x}")
    pos += 4
    index = 0
    while pos < size:
        if size - pos < 4:
            raise ImageError(f"{what}: entry {index} at offset {pos}: truncated "
                             f"length ({size - pos} of 4 bytes)")
        n = _U32.unpack_from(data, pos)[0]
        pos += 4
        if n > size - pos:
            raise ImageError(f"{what}: entry {index} at offset {pos - 4}: truncated, "
                             f"its length says {n} bytes but {size - pos} are left")
        yield index, pos, pos + n
        pos += n
        index += 1


_PAGEMAP_TAGS = {0x08: "vaddr", 0x10: "compat_nr_pages", 0x18: "in_parent",
                 0x20: "flags", 0x28: "nr_pages"}


def _pagemap_entries(data: Buffer, what: str) -> Tuple[Dict[str, Any], List[Tuple[int, int, int]]]:
    """A pagemap image's head and its entries as (vaddr, nr_pages, flags),
    normalized as CRIU does (field 5 else field 2; in_parent sets PE_PARENT;
    no flags means PE_PRESENT).  The same checks as decode_image; a fast loop
    for entries made only of fields 1-5, the generic decoder for the rest."""
    k = KINDS["pagemap"]
    head = None
    out: List[Tuple[int, int, int]] = []
    append = out.append
    for index, pos, end in _frame_entries(data, k, what):
        if index == 0:
            head = _decode_message(_PAGEMAP_HEAD, data, pos, end, what)
            continue
        vaddr = compat = nr = flags = None
        parent = False
        start = pos
        while pos < end:
            tag = data[pos]
            if tag not in _PAGEMAP_TAGS:
                break
            b = data[pos + 1] if pos + 1 < end else 0x80
            if b < 0x80:
                v = b
                pos += 2
            else:
                v, pos = _varint(data, pos + 1, end, what)
            if tag == 0x08:
                vaddr = v
            elif tag == 0x10:
                compat = v
            elif tag == 0x28:
                nr = v
            elif tag == 0x20:
                flags = v
            else:
                parent = v != 0
        if pos != end or vaddr is None or compat is None:
            e = _decode_message(_PAGEMAP_ENTRY, data, start, end, what)
            vaddr, compat = e["vaddr"], e["compat_nr_pages"]
            nr, flags, parent = e.get("nr_pages"), e.get("flags"), e.get("in_parent", False)
        if flags is None:
            flags = PE_PRESENT
        if parent:
            flags |= PE_PARENT          # old images: in_parent and no flags
        append((vaddr, compat if nr is None else nr, flags))
    if head is None:
        raise ImageError(f"{what}: no {_PAGEMAP_HEAD.name} entry")
    return head, out


def decode_image(data: Buffer, kind: str, what: str = "image") -> List[Dict[str, Any]]:
    """Decode a whole image (bytes-like) of one of KINDS into a list of dicts.

    Field names are CRIU's; an optional field that is absent is absent from
    the dict.  For "pagemap", the first dict is the pagemap_head.  *what*
    names the image in error messages (pass its path).
    """
    k = KINDS[kind]
    out = []
    for index, start, end in _frame_entries(data, k, what):
        msg = k.head if k.head is not None and index == 0 else k.entry
        out.append(_decode_message(msg, data, start, end, what))
    if k.head is not None and not out:
        raise ImageError(f"{what}: no {k.head.name} entry")
    return out


# -- encoding ---------------------------------------------------------------------


def _put_varint(out: bytearray, v: int) -> None:
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def _encode_message(msg: _Message, values: Mapping[str, Any], out: bytearray) -> None:
    for number, name, kind, label in msg.fields:
        v = values.get(name)
        if v is None:
            if label == _REQ:
                raise ValueError(f"{msg.name}: required field {name!r} missing")
            continue
        for item in (v if label == _REP else (v,)):
            if isinstance(kind, _Message):
                sub = bytearray()
                _encode_message(kind, item, sub)
                _put_varint(out, number << 3 | 2)
                _put_varint(out, len(sub))
                out += sub
            elif kind in _VARINT_KINDS:
                item = int(item)
                if kind == "s":
                    item = (item << 1) ^ (item >> 63)
                elif item < 0:
                    if kind == "u":
                        raise ValueError(f"{msg.name}.{name}: {item} is negative")
                    item &= _U64_MASK
                if item >> 64:
                    raise ValueError(f"{msg.name}.{name}: {item} does not fit 64 bits")
                _put_varint(out, number << 3)
                _put_varint(out, item)
            else:
                raw = item.encode("utf-8") if kind == "str" else bytes(item)
                _put_varint(out, number << 3 | 2)
                _put_varint(out, len(raw))
                out += raw


def _image_header(k: _Kind) -> bytes:
    return (_U32.pack(IMG_COMMON_MAGIC) if k.common else b"") + _U32.pack(k.magic)


def _entry_bytes(msg: _Message, values: Mapping[str, Any]) -> bytes:
    body = bytearray()
    _encode_message(msg, values, body)
    return _U32.pack(len(body)) + body


def encode_image(kind: str, entries: Iterable[Mapping[str, Any]]) -> bytes:
    """The bytes of an image of one of KINDS holding *entries* (dicts as
    decode_image returns them; for "pagemap" the first is the head)."""
    k = KINDS[kind]
    out = bytearray(_image_header(k))
    for index, values in enumerate(entries):
        msg = k.head if k.head is not None and index == 0 else k.entry
        out += _entry_bytes(msg, values)
    return bytes(out)


# -- the objects of a memory dump ----------------------------------------------------


@dataclass(frozen=True)
class Vma:
    """One vma_entry of mm-PID.img.  start/end are addresses, pgoff is in
    bytes; prot is PROT_*, flags MAP_*, status CRIU's VMA_* bits; shmid is the
    files.img id of the file for file mappings (memfd ones included), the
    shmem object's id for VMA_ANON_SHARED."""
    start: int
    end: int
    pgoff: int = 0
    shmid: int = 0
    prot: int = 0
    flags: int = 0
    status: int = VMA_AREA_REGULAR | VMA_ANON_PRIVATE
    fd: int = -1
    madv: Optional[int] = None
    fdflags: Optional[int] = None

    @property
    def size(self) -> int:
        return self.end - self.start

    @property
    def is_shmem(self) -> bool:
        """Its pages are in a shmem pagemap (memfd or anonymous shared)."""
        return bool(self.status & (VMA_AREA_MEMFD | VMA_ANON_SHARED)) and \
            not self.status & VMA_AREA_SYSVIPC

    @property
    def is_private(self) -> bool:
        """Its pages (if any) are in the process's own pagemap."""
        return not self.status & (VMA_FILE_SHARED | VMA_ANON_SHARED | VMA_AREA_SYSVIPC
                                  | VMA_AREA_MEMFD | VMA_AREA_SOCKET)

    def as_entry(self) -> Dict[str, Any]:
        return {name: getattr(self, name) for name in _VMA_NAMES}


_VMA_NAMES = tuple(f[1] for f in _VMA_ENTRY.fields)


@dataclass
class Mm:
    """mm-PID.img's single mm_entry: the VMA list and the mm_* fields."""
    vmas: List[Vma] = field(default_factory=list)
    mm_start_code: int = 0
    mm_end_code: int = 0
    mm_start_data: int = 0
    mm_end_data: int = 0
    mm_start_stack: int = 0
    mm_start_brk: int = 0
    mm_brk: int = 0
    mm_arg_start: int = 0
    mm_arg_end: int = 0
    mm_env_start: int = 0
    mm_env_end: int = 0
    exe_file_id: int = 0
    mm_saved_auxv: List[int] = field(default_factory=list)
    dumpable: Optional[int] = None
    aios: List[Dict[str, int]] = field(default_factory=list)
    thp_disabled: Optional[bool] = None

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> "Mm":
        values = dict(entry)
        values["vmas"] = [Vma(**v) for v in values.get("vmas", ())]
        return cls(**values)

    def as_entry(self) -> Dict[str, Any]:
        out = {f[1]: getattr(self, f[1]) for f in _MM_ENTRY.fields}
        out["vmas"] = [v.as_entry() for v in self.vmas]
        return out


class PageRun(NamedTuple):
    """Pages of one pagemap entry (or the part of one inside a VMA).

    vaddr: the address (process pagemap, and everything pages_of returns) or
    the offset in the shmem object (a shmem Pagemap's runs); path/offset:
    where the bytes are, None when not in this dump (PE_PARENT: in the parent
    snapshot; PE_LAZY without PE_PRESENT: with a page server)."""
    vaddr: int
    path: Optional[str]
    offset: Optional[int]
    nr_pages: int
    flags: int

    @property
    def end(self) -> int:
        return self.vaddr + self.nr_pages * PAGE_SIZE


@dataclass(frozen=True)
class Pagemap:
    """One pagemap image (pagemap-PID.img or pagemap-shmem-SHMID.img) and
    where its pages are: runs in image order, which is address order."""
    path: str
    pages_id: int
    pages_path: str
    runs: Tuple[PageRun, ...]
    _starts: List[int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "runs", tuple(self.runs))
        object.__setattr__(self, "_starts", [r.vaddr for r in self.runs])

    def runs_in(self, start: int, end: int, shift: int = 0) -> List[PageRun]:
        """The runs clipped to [start, end), their vaddr moved by *shift*."""
        out = []
        i = max(bisect.bisect_right(self._starts, start) - 1, 0)
        for run in self.runs[i:]:
            if run.vaddr >= end:
                break
            lo, hi = max(run.vaddr, start), min(run.end, end)
            if lo >= hi:
                continue
            skip = lo - run.vaddr
            out.append(run._replace(
                vaddr=lo + shift, nr_pages=(hi - lo) // PAGE_SIZE,
                offset=None if run.offset is None else run.offset + skip))
        return out


@dataclass
class Dump:
    """A CRIU dump's memory images, as read_dump returns them."""
    directory: str
    pid: int
    mm: Mm
    pagemap: Pagemap
    shmem: Dict[int, Pagemap]                 # by shmid
    inventory: Optional[Dict[str, Any]] = None
    pstree: List[Dict[str, Any]] = field(default_factory=list)
    files: Dict[int, Dict[str, Any]] = field(default_factory=dict)          # by id
    memfd_inodes: Dict[int, Dict[str, Any]] = field(default_factory=dict)   # by inode_id

    @property
    def vmas(self) -> List[Vma]:
        return self.mm.vmas

    def shmid_of(self, vma: Vma) -> Optional[int]:
        """The shmem object whose pagemap holds vma's pages, or None if its
        pages are in the process's pagemap (or nowhere in the dump)."""
        return _shmid_of(vma, self.files, self.memfd_inodes, self.directory)

    def pages_of(self, vma: Vma) -> List[PageRun]:
        """vma's pages in this dump as runs in address order: (vaddr, pages
        file, offset in it, nr_pages, flags), clipped to the VMA; for a shmem
        VMA, its part of the object's pagemap moved to its addresses.
        Addresses with no run read as zeros, or for file mappings as the
        file.  SysV shm and packet-socket VMAs (pages in other images) give
        no runs."""
        shmid = self.shmid_of(vma)
        if shmid is not None:
            return self.shmem[shmid].runs_in(vma.pgoff, vma.pgoff + vma.size,
                                             vma.start - vma.pgoff)
        if not vma.is_private:
            return []
        return self.pagemap.runs_in(vma.start, vma.end)

    def read(self, run: PageRun) -> bytes:
        """The bytes of one run (ImageError if they are not in this dump)."""
        if run.path is None or run.offset is None:
            raise ImageError(f"{self.directory}: pages at {run.vaddr:#x} are not in this "
                             f"dump (flags {run.flags:#x}: parent snapshot or lazy)")
        size = run.nr_pages * PAGE_SIZE
        with open(run.path, "rb") as f:
            data = os.pread(f.fileno(), size, run.offset)
        if len(data) != size:
            raise ImageError(f"{run.path}: {len(data)} bytes at offset {run.offset}, "
                             f"expected {size}")
        return data


# -- reading --------------------------------------------------------------------------


def _read_optional(path: str) -> Optional[bytes]:
    """The file's bytes, or None if it does not exist."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None


def _read_file(path: str) -> bytes:
    """The file's bytes; ImageError if it does not exist."""
    data = _read_optional(path)
    if data is None:
        raise ImageError(f"{path}: missing")
    return data


def _page_runs(entries: Sequence[Tuple[int, int, int]], pages_path: str,
               what: str) -> List[PageRun]:
    """PageRuns of normalized pagemap entries, with their offsets in the pages file."""
    runs: List[PageRun] = []
    append = runs.append
    offset = 0
    for i, (vaddr, nr, flags) in enumerate(entries):
        if nr == 0:
            raise ImageError(f"{what}: entry {i} at {vaddr:#x} has no pages")
        if vaddr % PAGE_SIZE:
            raise ImageError(f"{what}: entry {i} vaddr {vaddr:#x} is not page-aligned")
        if flags & PE_PRESENT:
            append(PageRun(vaddr, pages_path, offset, nr, flags))
            offset += nr * PAGE_SIZE
        else:
            append(PageRun(vaddr, None, None, nr, flags))
    return runs


class _Ranges:
    """[start, end) ranges, touching ones merged, for "is [a, b) inside one"."""

    def __init__(self, ranges: Iterable[Tuple[int, int]]):
        merged: List[List[int]] = []
        for start, end in sorted(ranges):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._starts = [m[0] for m in merged]
        self._ends = [m[1] for m in merged]

    def holds(self, start: int, end: int) -> bool:
        j = bisect.bisect_right(self._starts, start) - 1
        return j >= 0 and end <= self._ends[j]


def check_pagemap(runs: Sequence[PageRun], ranges: Iterable[Tuple[int, int]],
                  what: str) -> None:
    """ImageError unless runs are in increasing order, do not overlap, and
    each lies inside one of *ranges* ([start, end) pairs; touching ranges
    count as one, since CRIU's entries may span adjacent VMAs)."""
    inside = _Ranges(ranges)
    prev_end = None
    for i, run in enumerate(runs):
        if prev_end is not None and run.vaddr < prev_end:
            raise ImageError(f"{what}: entry {i} [{run.vaddr:#x}, {run.end:#x}) overlaps "
                             f"or precedes the entry before it (which ends at {prev_end:#x})")
        prev_end = run.end
        if not inside.holds(run.vaddr, run.end):
            raise ImageError(f"{what}: entry {i} [{run.vaddr:#x}, {run.end:#x}) is outside "
                             f"every VMA that keeps its pages there")


def _read_pagemap(directory: str, name: str, ranges: Iterable[Tuple[int, int]]) -> Pagemap:
    path = os.path.join(directory, name)
    head, entries = _pagemap_entries(_read_file(path), path)
    pages_id = head["pages_id"]
    pages_path = os.path.join(directory, f"pages-{pages_id}.img")
    runs = _page_runs(entries, pages_path, path)
    check_pagemap(runs, ranges, path)
    need = sum(r.nr_pages for r in runs if r.path is not None) * PAGE_SIZE
    try:
        have = os.stat(pages_path).st_size
    except FileNotFoundError:
        if need:
            raise ImageError(f"{pages_path}: missing ({path} has {need} bytes of pages)") from None
        have = 0
    if have != need:
        raise ImageError(f"{pages_path}: {have} bytes, but {path} describes {need} bytes "
                         f"({'too short' if have < need else 'extra bytes'})")
    return Pagemap(path, pages_id, pages_path, tuple(runs))


def _shmid_of(vma: Vma, files: Dict[int, Dict[str, Any]],
              memfd_inodes: Dict[int, Dict[str, Any]], directory: str) -> Optional[int]:
    if not vma.is_shmem:
        return None
    if not vma.status & VMA_AREA_MEMFD:
        return vma.shmid                     # VMA_ANON_SHARED: shmid is the object
    where = f"{directory}: VMA {vma.start:#x}-{vma.end:#x}"
    f = files.get(vma.shmid)
    if f is None:
        raise ImageError(f"{where} is a memfd mapping of file id {vma.shmid}, "
                         f"which files.img does not have")
    if f["type"] != FD_TYPE_MEMFD or "memfd" not in f:
        raise ImageError(f"{where} is a memfd mapping of file id {vma.shmid}, "
                         f"but files.img has that id as type {f['type']}")
    inode = memfd_inodes.get(f["memfd"]["inode_id"])
    if inode is None:
        raise ImageError(f"{where}: memfd inode {f['memfd']['inode_id']} (files.img id "
                         f"{vma.shmid}) is not in memfd.img")
    shmid: int = inode["shmid"]
    return shmid


_MM_NAME = re.compile(r"mm-(\d+)\.img\Z")


def read_dump(directory: str, pid: Optional[int] = None) -> Dump:
    """Read the memory images of process *pid* (default: pstree.img's first
    task, else the only mm-PID.img) in a CRIU dump directory.

    Reads inventory.img and pstree.img if present, mm-PID.img,
    pagemap-PID.img, files.img/memfd.img when a VMA is a memfd mapping, and
    the shmem pagemaps the VMAs use; pages files are only stat()ed (their size
    must match the pagemap exactly).  Raises ImageError for anything
    malformed or inconsistent.
    """
    directory = os.fspath(directory)

    def j(name: str) -> str:
        return os.path.join(directory, name)

    inventory = None
    data = _read_optional(j("inventory.img"))
    if data is not None:
        entries = decode_image(data, "inventory", j("inventory.img"))
        if len(entries) != 1:
            raise ImageError(f"{j('inventory.img')}: {len(entries)} entries, expected 1")
        inventory = entries[0]
        if inventory["img_version"] != IMG_VERSION:
            raise ImageError(f"{j('inventory.img')}: img_version {inventory['img_version']}, "
                             f"expected {IMG_VERSION}")
    pstree: List[Dict[str, Any]] = []
    data = _read_optional(j("pstree.img"))
    if data is not None:
        pstree = decode_image(data, "pstree", j("pstree.img"))
        if not pstree:
            raise ImageError(f"{j('pstree.img')}: no task")
    if pid is None:
        if pstree:
            pid = pstree[0]["pid"]
        else:
            pids = [int(m.group(1)) for m in map(_MM_NAME.match, os.listdir(directory)) if m]
            if len(pids) != 1:
                raise ImageError(f"{directory}: no pstree.img and {len(pids)} mm-PID.img "
                                 f"files: pass pid")
            pid = pids[0]

    mm_path = j(f"mm-{pid}.img")
    entries = decode_image(_read_file(mm_path), "mm", mm_path)
    if len(entries) != 1:
        raise ImageError(f"{mm_path}: {len(entries)} mm entries, expected 1")
    mm = Mm.from_entry(entries[0])
    prev = None
    for v in mm.vmas:
        if v.start >= v.end or v.start % PAGE_SIZE or v.end % PAGE_SIZE:
            raise ImageError(f"{mm_path}: VMA {v.start:#x}-{v.end:#x} is empty or not "
                             f"page-aligned")
        if prev is not None and v.start < prev.end:
            raise ImageError(f"{mm_path}: VMA {v.start:#x}-{v.end:#x} overlaps or precedes "
                             f"{prev.start:#x}-{prev.end:#x}")
        if v.end > USER_END and not v.status & VMA_AREA_VSYSCALL:
            raise ImageError(f"{mm_path}: VMA {v.start:#x}-{v.end:#x} ends past {USER_END:#x}, "
                             f"the end of any Linux user address space")
        if v.prot & ~PROT_MASK:
            raise ImageError(f"{mm_path}: VMA {v.start:#x}-{v.end:#x} has protection "
                             f"{v.prot:#x}: only PROT_READ|PROT_WRITE|PROT_EXEC ({PROT_MASK:#x}) "
                             f"bits are valid")
        if v.pgoff % PAGE_SIZE or v.pgoff + v.size > OFF_MAX:
            raise ImageError(f"{mm_path}: VMA {v.start:#x}-{v.end:#x} has file offset "
                             f"{v.pgoff:#x}: not page-aligned or past the largest file offset")
        prev = v

    files: Dict[int, Dict[str, Any]] = {}
    memfd_inodes: Dict[int, Dict[str, Any]] = {}
    if any(v.status & VMA_AREA_MEMFD for v in mm.vmas):
        files = {e["id"]: e for e in decode_image(_read_file(j("files.img")), "files",
                                                 j("files.img"))}
        memfd_inodes = {e["inode_id"]: e for e in decode_image(_read_file(j("memfd.img")),
                                                              "memfd", j("memfd.img"))}

    pagemap = _read_pagemap(directory, f"pagemap-{pid}.img",
                            ((v.start, v.end) for v in mm.vmas if v.is_private))
    extents: Dict[int, int] = {}
    for v in mm.vmas:
        shmid = _shmid_of(v, files, memfd_inodes, directory)
        if shmid is not None:
            extents[shmid] = max(extents.get(shmid, 0), v.pgoff + v.size)
    for inode in memfd_inodes.values():
        if inode["shmid"] in extents:
            size = -(-inode["size"] // PAGE_SIZE) * PAGE_SIZE
            extents[inode["shmid"]] = max(extents[inode["shmid"]], size)
    shmem = {shmid: _read_pagemap(directory, f"pagemap-shmem-{shmid}.img", [(0, size)])
             for shmid, size in sorted(extents.items())}
    return Dump(directory, pid, mm, pagemap, shmem, inventory, pstree, files, memfd_inodes)


# -- writing ---------------------------------------------------------------------------


def encode_mm(mm: Mm) -> bytes:
    """The bytes of mm-PID.img for *mm*."""
    return encode_image("mm", [mm.as_entry()])


def _varint_bytes(v: int) -> bytes:
    if v < 0x80:
        return _SMALL_VARINTS[v]
    out = bytearray()
    while v > 0x7F:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


_SMALL_VARINTS = [bytes((i,)) for i in range(0x80)]


def _flag_field(flags: int) -> bytes:
    return b"\x20" + _varint_bytes(flags) + b"\x28"


def _pagemap_entry_bytes(vaddr: int, nr: int, flag_field: bytes) -> bytes:
    """One framed pagemap_entry.  Fields 1, 2, 4, 5: nr_pages in both field
    2 (CRIU <= 4.1, crit 3.17) and field 5 (CRIU >= 4.2)."""
    nrb = _varint_bytes(nr)
    body = b"\x08" + _varint_bytes(vaddr) + b"\x10" + nrb + flag_field + nrb
    return _U32.pack(len(body)) + body


def encode_pagemap(pages_id: int, entries: Iterable[Tuple[int, int, int]]) -> bytes:
    """The bytes of a pagemap image: the head with *pages_id*, then one
    entry per (vaddr, nr_pages, flags), written as write_pagemap writes them
    (the count in fields 2 and 5).  For writers that put the pages in the
    pages file themselves."""
    out = [_image_header(KINDS["pagemap"]),
           _entry_bytes(_PAGEMAP_HEAD, {"pages_id": pages_id})]
    fields: Dict[int, bytes] = {}
    for vaddr, nr, flags in entries:
        if nr <= 0 or nr > 0xFFFFFFFF:
            raise ValueError(f"entry at {vaddr:#x}: {nr} pages (1 to 2^32-1)")
        ff = fields.get(flags)
        if ff is None:
            ff = fields[flags] = _flag_field(flags)
        out.append(_pagemap_entry_bytes(vaddr, nr, ff))
    return b"".join(out)


def write_pagemap(pagemap_file: BinaryIO, pages_file: BinaryIO, pages_id: int,
                  runs: Iterable[Tuple[int, Any]], *,
                  within: Optional[Iterable[Tuple[int, int]]] = None,
                  flags: int = PE_PRESENT) -> List[PageRun]:
    """Stream a pagemap image and its pages image.

    *runs* yields (vaddr, bytes-like) in increasing address order, each a
    whole number of pages (an address is the offset in the object for a
    shmem pagemap); each run becomes one pagemap entry with *flags* and its
    bytes are written to *pages_file* as they come.  *within*, if given, is
    the [start, end) ranges runs must lie in.  Returns the runs as PageRuns
    (path None, offsets in the pages file).  ValueError for a bad run; what
    was written before it stays written.
    """
    if flags & ~(PE_PARENT | PE_LAZY | PE_PRESENT):
        raise ValueError(f"unknown pagemap flags {flags:#x}")
    inside = None if within is None else _Ranges(within)
    pagemap_file.write(_image_header(KINDS["pagemap"]) + _entry_bytes(
        _PAGEMAP_HEAD, {"pages_id": pages_id}))
    present = bool(flags & PE_PRESENT)
    flag_field = _flag_field(flags)
    out: List[PageRun] = []
    append = out.append
    offset = 0
    prev_end = 0
    pending = []
    for vaddr, data in runs:
        size = memoryview(data).nbytes
        if vaddr % PAGE_SIZE or size % PAGE_SIZE or not size:
            raise ValueError(f"run at {vaddr:#x} of {size} bytes: address and size must "
                             f"be whole non-zero pages ({PAGE_SIZE})")
        if vaddr < prev_end:
            raise ValueError(f"run at {vaddr:#x} overlaps or precedes the previous one "
                             f"(which ends at {prev_end:#x})")
        nr = size // PAGE_SIZE
        if nr > 0xFFFFFFFF:
            raise ValueError(f"run at {vaddr:#x}: {nr} pages do not fit crit 3.17's uint32")
        if inside is not None and not inside.holds(vaddr, vaddr + size):
            raise ValueError(f"run [{vaddr:#x}, {vaddr + size:#x}) is outside every VMA")
        prev_end = vaddr + size
        pending.append(_pagemap_entry_bytes(vaddr, nr, flag_field))
        if len(pending) >= 8192:
            pagemap_file.write(b"".join(pending))
            pending.clear()
        if present:
            pages_file.write(data)
            append(PageRun(vaddr, None, offset, nr, flags))
            offset += size
        else:
            append(PageRun(vaddr, None, None, nr, flags))
    pagemap_file.write(b"".join(pending))
    return out


def _default_pstree(pid: int) -> List[Dict[str, Any]]:
    return [{"pid": pid, "ppid": 0, "pgid": pid, "sid": pid, "threads": [pid]}]


DEFAULT_INVENTORY: Dict[str, Any] = {
    "img_version": IMG_VERSION, "fdinfo_per_id": True, "ns_per_id": True, "lsmtype": 0,
}


def write_dump(directory: str, pid: int, mm: Mm, pages: Iterable[Tuple[int, Any]], *,
               shmem: Optional[Mapping[int, Iterable[Tuple[int, Any]]]] = None,
               files: Sequence[Mapping[str, Any]] = (),
               memfd_inodes: Sequence[Mapping[str, Any]] = (),
               pstree: Optional[Sequence[Mapping[str, Any]]] = None,
               inventory: Optional[Mapping[str, Any]] = DEFAULT_INVENTORY,
               first_pages_id: int = 1) -> List[str]:
    """Write a process's memory as CRIU images in *directory* (which must exist).

    mm-PID.img from *mm*; pagemap-PID.img + pages-N.img from *pages*
    ((vaddr, bytes-like) runs of the private VMAs, streamed);
    pagemap-shmem-SHMID.img + pages-N.img for each *shmem* object (runs of
    (offset in the object, bytes-like)); files.img and memfd.img from the
    given entry dicts (needed for memfd-backed VMAs); pstree.img (default:
    one task, a session leader) and inventory.img (default DEFAULT_INVENTORY;
    None for none).  Shmem objects get pages ids from *first_pages_id* on in
    shmid order, the process's pagemap the next one, as CRIU numbers them.
    Returns the paths written.
    """
    directory = os.fspath(directory)
    written: List[str] = []

    def put(name: str, data: bytes) -> None:
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(data)
        written.append(path)

    def put_pagemap(name: str, pages_id: int, runs: Iterable[Tuple[int, Any]],
                    within: Optional[Sequence[Tuple[int, int]]]) -> None:
        pm = os.path.join(directory, name)
        pg = os.path.join(directory, f"pages-{pages_id}.img")
        with open(pm, "wb") as pmf, open(pg, "wb") as pgf:
            write_pagemap(pmf, pgf, pages_id, runs, within=within)
        written.extend((pm, pg))

    if inventory is not None:
        put("inventory.img", encode_image("inventory", [inventory]))
    put("pstree.img", encode_image("pstree", _default_pstree(pid) if pstree is None else pstree))
    if files:
        put("files.img", encode_image("files", files))
    if memfd_inodes:
        put("memfd.img", encode_image("memfd", memfd_inodes))
    put(f"mm-{pid}.img", encode_mm(mm))
    pages_id = first_pages_id
    shmem_runs = shmem or {}
    for shmid in sorted(shmem_runs):
        put_pagemap(f"pagemap-shmem-{shmid}.img", pages_id, shmem_runs[shmid], None)
        pages_id += 1
    put_pagemap(f"pagemap-{pid}.img", pages_id, pages,
                [(v.start, v.end) for v in mm.vmas if v.is_private])
    return written
