#!/usr/bin/env python3
"""Encode + decode cost of CRIU memory images: pvmmap.criu.images vs protobuf.

    python3 benchmarks/criu_codec.py [--repeat 5]

Workloads: a 1 GiB dump's pagemap as 262144 one-page entries (the worst case,
every other page touched) and as 1024 entries of 256 pages (what CRIU writes
for a fully touched region: it splits at its 1 MiB page-pipe buffers); and
mm-PID.img with 14 VMAs (the fixture) and 65530 (vm.max_map_count).
"encode" is the image bytes from (vaddr, nr_pages) / VMA values; "decode" is
image bytes back to (vaddr, nr_pages, flags) / VMA field values.  Our pagemap
encode goes through write_pagemap with a null pages sink (page bytes are not
copied; only per-run work is measured).  The protobuf side (if importable)
builds the same messages from descriptors at run time and frames them the
same way.  Prints the best of --repeat runs.
"""
import argparse
import importlib.util
import io
import os
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.path.join(HERE, "..", "src", "pvmmap", "criu", "images.py")
FIXTURE_MM = os.path.join(HERE, "..", "tests", "data", "criu-dump-v4", "mm-17730.img")
PAGE = 4096
U32 = struct.Struct("<I")


def load_images():
    spec = importlib.util.spec_from_file_location("criu_images_bench", SRC)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


class NullSink:
    def write(self, data):
        return len(data)


def pagemap_runs(count, nr):
    base = 0x7F0000000000
    step = nr * PAGE * (2 if nr == 1 else 1)
    return [(base + i * step, nr) for i in range(count)]


def many_vmas(images, count):
    vmas = []
    addr = 0x7F0000000000
    for i in range(count):
        vmas.append(images.Vma(addr, addr + PAGE, prot=3 - (i & 1) * 2, flags=0x22))
        addr += 2 * PAGE
    return images.Mm(vmas=vmas, mm_saved_auxv=list(range(44)))


# -- ours -----------------------------------------------------------------------


def ours_pagemap(images, runs):
    bufs = {nr: memoryview(bytearray(nr * PAGE)) for nr in {nr for _, nr in runs}}
    stream = ((v, bufs[nr]) for v, nr in runs)
    pm = io.BytesIO()
    t0 = time.perf_counter()
    images.write_pagemap(pm, NullSink(), 2, stream)
    data = pm.getvalue()
    t1 = time.perf_counter()
    head, out = images._pagemap_entries(data, "bench")      # what read_dump uses
    t2 = time.perf_counter()
    assert [(v, nr) for v, nr, _ in out] == runs
    return t1 - t0, t2 - t1, len(data)


def ours_mm(images, mm):
    t0 = time.perf_counter()
    data = images.encode_mm(mm)
    t1 = time.perf_counter()
    back = images.Mm.from_entry(images.decode_image(data, "mm", "bench")[0])
    t2 = time.perf_counter()
    assert back.vmas == mm.vmas
    return t1 - t0, t2 - t1, len(data)


# -- protobuf -----------------------------------------------------------------------


def protobuf_classes():
    try:
        from google.protobuf import descriptor_pb2, descriptor_pool
        from google.protobuf import __version__ as version
        from google.protobuf.internal import api_implementation
    except ImportError:
        return None
    try:
        from google.protobuf.message_factory import GetMessageClass
    except ImportError:                      # protobuf < 4.22
        from google.protobuf import message_factory
        factory = message_factory.MessageFactory()
        GetMessageClass = factory.GetPrototype  # noqa: N806
    F = descriptor_pb2.FieldDescriptorProto
    fdp = descriptor_pb2.FileDescriptorProto(name="bench_criu.proto", package="bench",
                                             syntax="proto2")

    def message(name, fields):
        m = fdp.message_type.add(name=name)
        for number, fname, ftype, label, type_name in fields:
            f = m.field.add(name=fname, number=number, type=ftype, label=label)
            if type_name:
                f.type_name = type_name

    REQ, OPT, REP = F.LABEL_REQUIRED, F.LABEL_OPTIONAL, F.LABEL_REPEATED
    message("pagemap_entry", [(1, "vaddr", F.TYPE_UINT64, REQ, None),
                              (2, "compat_nr_pages", F.TYPE_UINT32, REQ, None),
                              (3, "in_parent", F.TYPE_BOOL, OPT, None),
                              (4, "flags", F.TYPE_UINT32, OPT, None),
                              (5, "nr_pages", F.TYPE_UINT64, OPT, None)])
    U64, U32, S64 = F.TYPE_UINT64, F.TYPE_UINT32, F.TYPE_SINT64
    message("vma_entry", [(1, "start", U64, REQ, None), (2, "end", U64, REQ, None),
                          (3, "pgoff", U64, REQ, None), (4, "shmid", U64, REQ, None),
                          (5, "prot", U32, REQ, None), (6, "flags", U32, REQ, None),
                          (7, "status", U32, REQ, None), (8, "fd", S64, REQ, None),
                          (9, "madv", U64, OPT, None), (10, "fdflags", U32, OPT, None)])
    mm_fields = [(i, f"f{i}", F.TYPE_UINT64, REQ, None) for i in range(1, 12)]
    mm_fields += [(12, "exe_file_id", F.TYPE_UINT32, REQ, None),
                  (13, "mm_saved_auxv", F.TYPE_UINT64, REP, None),
                  (14, "vmas", F.TYPE_MESSAGE, REP, ".bench.vma_entry"),
                  (15, "dumpable", F.TYPE_INT32, OPT, None),
                  (17, "thp_disabled", F.TYPE_BOOL, OPT, None)]
    message("mm_entry", mm_fields)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    cls = {n: GetMessageClass(pool.FindMessageTypeByName(f"bench.{n}"))
           for n in ("pagemap_entry", "mm_entry")}
    cls["label"] = f"protobuf {version} ({api_implementation.Type()})"
    return cls


def pb_pagemap(cls, runs):
    Entry = cls["pagemap_entry"]
    t0 = time.perf_counter()
    out = bytearray(U32.pack(0x54564319) + U32.pack(0x56084025))
    head = b"\x08\x02"
    out += U32.pack(len(head)) + head
    for vaddr, nr in runs:
        body = Entry(vaddr=vaddr, compat_nr_pages=nr, flags=4, nr_pages=nr).SerializeToString()
        out += U32.pack(len(body))
        out += body
    data = bytes(out)
    t1 = time.perf_counter()
    view = memoryview(data)
    pos = 8 + 4 + U32.unpack_from(data, 8)[0]
    back = []
    e = Entry()
    while pos < len(data):
        n = U32.unpack_from(data, pos)[0]
        pos += 4
        e.ParseFromString(view[pos:pos + n])
        pos += n
        back.append((e.vaddr, e.nr_pages if e.HasField("nr_pages") else e.compat_nr_pages,
                     e.flags if e.HasField("flags") else 4))
    t2 = time.perf_counter()
    assert [(v, nr) for v, nr, _ in back] == runs
    return t1 - t0, t2 - t1, len(data)


def pb_mm(cls, mm):
    Mm = cls["mm_entry"]
    names = ("start", "end", "pgoff", "shmid", "prot", "flags", "status", "fd")
    t0 = time.perf_counter()
    m = Mm(**{f"f{i}": 0 for i in range(1, 12)}, exe_file_id=0,
           mm_saved_auxv=mm.mm_saved_auxv)
    for v in mm.vmas:
        e = m.vmas.add(start=v.start, end=v.end, pgoff=v.pgoff, shmid=v.shmid, prot=v.prot,
                       flags=v.flags, status=v.status, fd=v.fd)
        if v.madv is not None:
            e.madv = v.madv
        if v.fdflags is not None:
            e.fdflags = v.fdflags
    body = m.SerializeToString()
    data = U32.pack(0x54564319) + U32.pack(0x57492820) + U32.pack(len(body)) + body
    t1 = time.perf_counter()
    back = Mm()
    back.ParseFromString(memoryview(data)[12:])
    vmas = [tuple(getattr(v, n) for n in names) for v in back.vmas]
    t2 = time.perf_counter()
    assert len(vmas) == len(mm.vmas)
    return t1 - t0, t2 - t1, len(data)


def best(fn, repeat):
    results = [fn() for _ in range(repeat)]
    return min(r[0] for r in results), min(r[1] for r in results), results[0][2]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    images = load_images()
    cls = protobuf_classes()
    work = [("pagemap, 262144 x 1 page", "pagemap", pagemap_runs(262144, 1)),
            ("pagemap, 1024 x 256 pages", "pagemap", pagemap_runs(1024, 256))]
    if os.path.exists(FIXTURE_MM):
        with open(FIXTURE_MM, "rb") as f:
            fixture = images.Mm.from_entry(images.decode_image(f.read(), "mm", FIXTURE_MM)[0])
        work.append((f"mm, {len(fixture.vmas)} VMAs (fixture)", "mm", fixture))
    work.append(("mm, 65530 VMAs", "mm", many_vmas(images, 65530)))
    print(f"Python {sys.version.split()[0]}; protobuf: {cls['label'] if cls else 'not installed'}")
    print(f"{'workload':30} {'codec':10} {'bytes':>9} {'encode':>10} {'decode':>10} {'total':>10}")
    for label, kind, data in work:
        rows = [("ours", (lambda: ours_pagemap(images, data)) if kind == "pagemap"
                 else (lambda: ours_mm(images, data)))]
        if cls:
            rows.append(("protobuf", (lambda: pb_pagemap(cls, data)) if kind == "pagemap"
                         else (lambda: pb_mm(cls, data))))
        for codec, fn in rows:
            enc, dec, size = best(fn, args.repeat)
            print(f"{label:30} {codec:10} {size:9} {enc * 1e3:8.2f}ms {dec * 1e3:8.2f}ms "
                  f"{(enc + dec) * 1e3:8.2f}ms")


if __name__ == "__main__":
    main()
