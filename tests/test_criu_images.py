"""pvmmap.criu.images: CRIU's own dump (tests/data/criu-dump-v4), round trips
through Debian's crit, bad images, and CRIU 4.1.1 dumping a live child.

images.py is loaded from its file path, so these tests need neither pvmmap's
C extension nor the rest of the package.
"""

import importlib.util
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parent.parent
IMAGES_PY = TOP / "src" / "pvmmap" / "criu" / "images.py"
FIXTURE = TOP / "tests" / "data" / "criu-dump-v4"
CRIT = "/usr/bin/crit"
PAGE = 4096


def _load_images():
    spec = importlib.util.spec_from_file_location("pvmmap_criu_images_under_test", IMAGES_PY)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


images = _load_images()
ImageError = images.ImageError

needs_crit = pytest.mark.skipif(not os.access(CRIT, os.X_OK),
                                reason=f"{CRIT} missing (tools/install-crit: apt-get install criu)")
needs_4k = pytest.mark.skipif(images.PAGE_SIZE != PAGE, reason="the fixture has 4 KiB pages")

PRIV, PRIV_END, PRIV_FILLED = 0x7F1961400000, 0x7F1961800000, 0x300000
RO, RO_END = 0x7F19618CF000, 0x7F19618DF000
SHARED, SHARED_END = 0x7F19618DF000, 0x7F19619DF000

# (start, end, pgoff, shmid, prot, flags, status): fixture README, "The VMA list"
FIXTURE_VMAS = [
    (0x400000, 0x401000, 0, 1, 1, 0x2, 0x41),
    (0x401000, 0x47A000, 0x1000, 1, 5, 0x2, 0x41),
    (0x47A000, 0x4A2000, 0x7A000, 1, 1, 0x2, 0x41),
    (0x4A2000, 0x4A6000, 0xA1000, 1, 1, 0x2, 0x41),
    (0x4A6000, 0x4A9000, 0xA5000, 1, 3, 0x2, 0x41),
    (0x4A9000, 0x4AE000, 0, 0, 3, 0x22, 0x201),
    (0x21DBE000, 0x21DE0000, 0, 0, 3, 0x22, 0x221),
    (PRIV, PRIV_END, 0, 0, 3, 0x22, 0x201),
    (RO, RO_END, 0, 0, 1, 0x22, 0x201),
    (SHARED, SHARED_END, 0, 2, 3, 0x1, 0x4081),
    (0x7F19619DF000, 0x7F19619E5000, 0, 0, 1, 0x22, 0x1201),
    (0x7F19619E5000, 0x7F19619E7000, 0, 0, 5, 0x22, 0x209),
    (0x7FFFD7032000, 0x7FFFD7053000, 0, 0, 3, 0x122, 0x201),
    (0xFFFFFFFFFF600000, 0xFFFFFFFFFF601000, 0, 0, 4, 0x22, 0x204),
]

# (vaddr, nr_pages, flags, offset in pages-2.img): fixture README
FIXTURE_PAGEMAP = [
    (0x401000, 1, 4, 0x0), (0x4A4000, 5, 4, 0x1000), (0x4A9000, 1, 6, 0x6000),
    (0x4AD000, 1, 6, 0x7000), (0x21DBE000, 3, 6, 0x8000), (PRIV, 251, 6, 0xB000),
    (0x7F19614FB000, 256, 6, 0x106000), (0x7F19615FB000, 256, 6, 0x206000),
    (0x7F19616FB000, 5, 6, 0x306000), (RO, 16, 6, 0x30B000),
    (0x7F19619E5000, 2, 4, 0x31B000), (0x7FFFD7050000, 3, 6, 0x31D000),
]

# the images read_dump reads, and their kinds
READ_IMAGES = {
    "inventory.img": "inventory", "pstree.img": "pstree", "mm-17730.img": "mm",
    "pagemap-17730.img": "pagemap", "pagemap-shmem-1112.img": "pagemap",
    "files.img": "files", "memfd.img": "memfd",
}


@pytest.fixture
def fixture_copy(tmp_path):
    """A writable copy of the fixture dump."""
    dst = tmp_path / "dump"
    shutil.copytree(FIXTURE, dst, ignore=shutil.ignore_patterns("crit-*", "*.md"))
    return dst


def _vma(dump, start):
    (vma,) = [v for v in dump.vmas if v.start == start]
    return vma


def _gather(dump, vma):
    """vma's bytes from the dump, zeros where no run covers it."""
    out = bytearray(vma.size)
    for run in dump.pages_of(vma):
        assert vma.start <= run.vaddr and run.end <= vma.end
        out[run.vaddr - vma.start:run.end - vma.start] = dump.read(run)
    return bytes(out)


# -- the fixture: CRIU 4.2's own images ---------------------------------------------


@needs_4k
def test_fixture_vmas():
    dump = images.read_dump(FIXTURE)
    assert dump.pid == 17730
    got = [(v.start, v.end, v.pgoff, v.shmid, v.prot, v.flags, v.status) for v in dump.vmas]
    assert got == FIXTURE_VMAS
    assert all(v.fd == -1 for v in dump.vmas)
    assert _vma(dump, SHARED).fdflags == 2
    assert _vma(dump, 0x7F19619DF000).madv == 0x10000
    assert _vma(dump, PRIV).fdflags is None and _vma(dump, PRIV).madv is None
    mm = dump.mm
    assert (mm.mm_start_code, mm.mm_brk, mm.exe_file_id) == (0x401000, 0x21DE0000, 1)
    assert mm.mm_saved_auxv[:4] == [33, 139746988675072, 51, 11952] and len(mm.mm_saved_auxv) == 44
    assert (mm.dumpable, mm.thp_disabled) == (1, False)
    assert dump.inventory["img_version"] == 2
    assert dump.inventory["dump_criu_run_id"] == "5d7656ce-cffd-484b-a027-7ec3c4b13e50"
    assert dump.pstree == [{"pid": 17730, "ppid": 0, "pgid": 17730, "sid": 17730,
                            "threads": [17730]}]


@needs_4k
def test_fixture_pagemap_entries():
    dump = images.read_dump(FIXTURE)
    pages = str(FIXTURE / "pages-2.img")
    assert dump.pagemap.pages_id == 2
    assert [(r.vaddr, r.nr_pages, r.flags, r.offset) for r in dump.pagemap.runs] == FIXTURE_PAGEMAP
    assert {r.path for r in dump.pagemap.runs} == {pages}
    # CRIU 4.2 put the count in field 5 only: field 2 is 0 in every entry
    raw = images.decode_image((FIXTURE / "pagemap-17730.img").read_bytes(), "pagemap")
    assert raw[0] == {"pages_id": 2}
    assert [(e["vaddr"], e["compat_nr_pages"], e["nr_pages"]) for e in raw[1:]] == \
        [(v, 0, nr) for v, nr, _, _ in FIXTURE_PAGEMAP]
    # and agrees with upstream crit 4.2
    ref = json.loads((FIXTURE / "crit-4.2-decoded" / "pagemap-17730.json").read_text())
    assert [(int(e["vaddr"], 16), e["nr_pages"]) for e in ref["entries"][1:]] == \
        [(v, nr) for v, nr, _, _ in FIXTURE_PAGEMAP]


@needs_4k
def test_fixture_region_bytes_and_hole():
    dump = images.read_dump(FIXTURE)
    priv = _vma(dump, PRIV)
    runs = dump.pages_of(priv)
    assert [(r.vaddr, r.nr_pages) for r in runs] == \
        [(PRIV, 251), (PRIV + 251 * PAGE, 256), (PRIV + 507 * PAGE, 256), (PRIV + 763 * PAGE, 5)]
    assert runs[-1].end == PRIV + PRIV_FILLED           # nothing in the 1 MiB hole
    assert all(r.offset == 0xB000 + (r.vaddr - PRIV) for r in runs)
    data = _gather(dump, priv)
    assert data[:PRIV_FILLED] == bytes((i * 7 + 1) & 0xFF for i in range(PRIV_FILLED))
    assert data[PRIV_FILLED:] == bytes(PRIV_END - PRIV - PRIV_FILLED)

    ro = _vma(dump, RO)
    assert [(r.vaddr, r.offset, r.nr_pages) for r in dump.pages_of(ro)] == [(RO, 0x30B000, 16)]
    assert _gather(dump, ro) == b"\x11" * (RO_END - RO)


@needs_4k
def test_fixture_memfd_chain():
    dump = images.read_dump(FIXTURE)
    shared = _vma(dump, SHARED)
    assert dump.files[2]["type"] == 18 and dump.files[2]["memfd"]["inode_id"] == 1
    assert dump.memfd_inodes[1]["shmid"] == 1112 and dump.memfd_inodes[1]["size"] == 1 << 20
    assert dump.shmid_of(shared) == 1112
    assert dump.shmid_of(_vma(dump, PRIV)) is None
    pm = dump.shmem[1112]
    assert pm.path == str(FIXTURE / "pagemap-shmem-1112.img") and pm.pages_id == 1
    assert pm.pages_path == str(FIXTURE / "pages-1.img")
    assert dump.pages_of(shared) == [images.PageRun(SHARED, str(FIXTURE / "pages-1.img"), 0,
                                                    256, images.PE_PRESENT)]
    assert _gather(dump, shared) == b"\x5a" * (SHARED_END - SHARED)
    # the shared VMA's pages are not in the process's pagemap
    assert not [r for r in dump.pagemap.runs if SHARED <= r.vaddr < SHARED_END]


@pytest.mark.parametrize("name", sorted(READ_IMAGES))
def test_fixture_reencodes_byte_for_byte(name):
    data = (FIXTURE / name).read_bytes()
    entries = images.decode_image(data, READ_IMAGES[name], name)
    assert images.encode_image(READ_IMAGES[name], entries) == data


def test_module_is_standalone():
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('m', {str(IMAGES_PY)!r})\n"
            "m = importlib.util.module_from_spec(spec); sys.modules['m'] = m\n"
            "spec.loader.exec_module(m)\n"
            "bad = sorted(n for n in sys.modules if n.split('.')[0] in ('pvmmap', 'google'))\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={"PATH": os.environ["PATH"]})


# -- round trips: our writer, Debian's crit 3.17, our reader -------------------------

EXE, MEMFD_FILE = 1, 3
SYN_BASE = 0x7F0000000000
SYN_PRIV = images.Vma(SYN_BASE, SYN_BASE + 16 * PAGE, prot=3, flags=0x22)
SYN_RO = images.Vma(SYN_BASE + 32 * PAGE, SYN_BASE + 36 * PAGE, prot=1, flags=0x22,
                    madv=0x10000)
SYN_MEMFD = images.Vma(SYN_BASE + 36 * PAGE, SYN_BASE + 44 * PAGE, pgoff=2 * PAGE,
                       shmid=MEMFD_FILE, prot=3, flags=0x1, fdflags=2,
                       status=images.VMA_AREA_REGULAR | images.VMA_FILE_SHARED
                       | images.VMA_AREA_MEMFD)
SYN_ANON_SHARED = images.Vma(0x7FFF00000000, 0x7FFF00004000, shmid=777, prot=3, flags=0x21,
                             status=images.VMA_AREA_REGULAR | images.VMA_ANON_SHARED)
SYN_STACK = images.Vma(0x7FFFFFFDE000, 0x7FFFFFFFF000, prot=3, flags=0x122)
SYN_VMAS = [SYN_PRIV, SYN_RO, SYN_MEMFD, SYN_ANON_SHARED, SYN_STACK]
MEMFD_SHMID = 4242


def _synthetic(directory):
    """Write a dump of SYN_VMAS; return {vaddr: expected bytes of its VMA}."""
    rnd = random.Random(2019)

    def pages(n):
        return bytes(rnd.getrandbits(8) for _ in range(n * PAGE))

    priv_runs = [(SYN_PRIV.start, pages(3)), (SYN_PRIV.start + 5 * PAGE, pages(1)),
                 (SYN_PRIV.start + 6 * PAGE, pages(10))]         # adjacent runs, a hole
    ro_run = (SYN_RO.start, memoryview(pages(4)))               # any bytes-like
    stack_run = (SYN_STACK.end - 2 * PAGE, bytearray(pages(2)))
    memfd_obj = [(0, pages(2)), (2 * PAGE, pages(3)), (7 * PAGE, pages(3))]  # 10 pages
    anon_obj = [(PAGE, pages(2))]
    mm = images.Mm(vmas=list(SYN_VMAS), mm_start_code=0x400000, mm_end_code=0x401000,
                   mm_start_stack=SYN_STACK.end - 64, mm_brk=0x1000000, exe_file_id=EXE,
                   mm_saved_auxv=[6, 4096, 0, 0], dumpable=1, thp_disabled=False)
    fown = {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0}
    files = [{"type": images.FD_TYPE_REG, "id": EXE,
              "reg": {"id": EXE, "flags": 0, "pos": 0, "fown": fown, "name": "/bin/true"}},
             {"type": images.FD_TYPE_MEMFD, "id": MEMFD_FILE,
              "memfd": {"id": MEMFD_FILE, "flags": 2, "pos": 0, "fown": fown, "inode_id": 1}}]
    memfds = [{"name": "memfd:syn", "uid": 0, "gid": 0, "size": 10 * PAGE,
               "shmid": MEMFD_SHMID, "seals": 0, "inode_id": 1, "mode": 0o100777}]
    written = images.write_dump(directory, 4321, mm,
                                iter(priv_runs + [ro_run, stack_run]),
                                shmem={MEMFD_SHMID: iter(memfd_obj), 777: anon_obj},
                                files=files, memfd_inodes=memfds)
    assert sorted(os.path.basename(p) for p in written) == sorted([
        "inventory.img", "pstree.img", "files.img", "memfd.img", "mm-4321.img",
        "pagemap-4321.img", "pages-3.img",
        "pagemap-shmem-777.img", "pages-1.img",
        f"pagemap-shmem-{MEMFD_SHMID}.img", "pages-2.img"])

    def layout(vma, runs, shift=0):
        out = bytearray(vma.size)
        for addr, data in runs:
            a = addr + shift
            lo, hi = max(a, vma.start), min(a + len(bytes(data)), vma.end)
            if lo < hi:
                out[lo - vma.start:hi - vma.start] = bytes(data)[lo - a:hi - a]
        return bytes(out)

    return {SYN_PRIV.start: layout(SYN_PRIV, priv_runs), SYN_RO.start: layout(SYN_RO, [ro_run]),
            SYN_STACK.start: layout(SYN_STACK, [stack_run]),
            SYN_MEMFD.start: layout(SYN_MEMFD, memfd_obj, SYN_MEMFD.start - SYN_MEMFD.pgoff),
            SYN_ANON_SHARED.start: layout(SYN_ANON_SHARED, anon_obj, SYN_ANON_SHARED.start),
            "runs": (priv_runs, ro_run, stack_run, memfd_obj, anon_obj)}


def _crit_decode(path):
    out = subprocess.run([CRIT, "decode", "-i", str(path)], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


@needs_crit
def test_roundtrip_crit_decodes_what_we_write(tmp_path):
    expect = _synthetic(tmp_path)
    priv_runs, ro_run, stack_run, memfd_obj, anon_obj = expect["runs"]

    mm = _crit_decode(tmp_path / "mm-4321.img")
    assert mm["magic"] == "MM"
    (entry,) = mm["entries"]
    fields = ("start", "end", "pgoff", "shmid", "prot", "flags", "status", "fd")
    assert [tuple(v[f] for f in fields) for v in entry["vmas"]] == \
        [tuple(getattr(v, f) for f in fields) for v in SYN_VMAS]
    assert [v.get("madv") for v in entry["vmas"]] == [v.madv for v in SYN_VMAS]
    assert [v.get("fdflags") for v in entry["vmas"]] == [v.fdflags for v in SYN_VMAS]
    assert (entry["exe_file_id"], entry["mm_saved_auxv"], entry["dumpable"]) == \
        (EXE, [6, 4096, 0, 0], 1)

    def crit_pagemap(name):
        d = _crit_decode(tmp_path / name)
        assert d["magic"] == "PAGEMAP"
        # crit 3.17 knows only field 2, and calls it nr_pages
        return d["entries"][0]["pages_id"], [(e["vaddr"], e["nr_pages"], e["flags"])
                                             for e in d["entries"][1:]]

    def ours(runs):
        return [(a, len(bytes(d)) // PAGE, images.PE_PRESENT) for a, d in runs]

    assert crit_pagemap("pagemap-4321.img") == (3, ours(priv_runs + [ro_run, stack_run]))
    assert crit_pagemap(f"pagemap-shmem-{MEMFD_SHMID}.img") == (2, ours(memfd_obj))
    assert crit_pagemap("pagemap-shmem-777.img") == (1, ours(anon_obj))

    files = _crit_decode(tmp_path / "files.img")["entries"]
    assert [(f["type"], f["id"]) for f in files] == [("REG", EXE), ("MEMFD", MEMFD_FILE)]
    assert files[1]["memfd"]["inode_id"] == 1 and files[0]["reg"]["name"] == "/bin/true"
    (memfd,) = _crit_decode(tmp_path / "memfd.img")["entries"]
    assert (memfd["shmid"], memfd["inode_id"], memfd["size"]) == (MEMFD_SHMID, 1, 10 * PAGE)
    (task,) = _crit_decode(tmp_path / "pstree.img")["entries"]
    assert (task["pid"], task["sid"], task["threads"]) == (4321, 4321, [4321])
    (inv,) = _crit_decode(tmp_path / "inventory.img")["entries"]
    assert inv["img_version"] == 2


@needs_crit
def test_roundtrip_crit_x_mems_lists_our_vmas(tmp_path):
    _synthetic(tmp_path)
    out = subprocess.run([CRIT, "x", str(tmp_path), "mems"], check=True,
                         capture_output=True, text=True).stdout
    lines = out.splitlines()
    assert lines[0] == "4321" and "/bin/true" in lines[1]
    listed = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in lines[2:]]
    assert listed == [(v.start, v.end) for v in SYN_VMAS]
    assert lines[2].split()[1] == "rw-" and lines[3].split()[1] == "r--"


@needs_4k
def test_roundtrip_our_reader_gets_the_bytes_back(tmp_path):
    expect = _synthetic(tmp_path)
    dump = images.read_dump(tmp_path)
    assert dump.pid == 4321
    assert dump.vmas == SYN_VMAS
    assert dump.shmid_of(SYN_MEMFD) == MEMFD_SHMID and dump.shmid_of(SYN_ANON_SHARED) == 777
    for vma in SYN_VMAS:
        assert _gather(dump, vma) == expect[vma.start], hex(vma.start)
    # the memfd VMA starts at object offset 2 pages: the object's first run is not in it
    assert [(r.vaddr, r.nr_pages, r.offset) for r in dump.pages_of(SYN_MEMFD)] == [
        (SYN_MEMFD.start, 3, 2 * PAGE), (SYN_MEMFD.start + 5 * PAGE, 3, 5 * PAGE)]
    # field 2 and field 5 both carry the count
    raw = images.decode_image((tmp_path / "pagemap-4321.img").read_bytes(), "pagemap")
    assert all(e["compat_nr_pages"] == e["nr_pages"] > 0 for e in raw[1:])


def test_writer_refuses_bad_runs(tmp_path):
    def write(runs, within=None):
        with open(tmp_path / "pm", "wb") as pm, open(tmp_path / "pg", "wb") as pg:
            images.write_pagemap(pm, pg, 1, runs, within=within)

    with pytest.raises(ValueError, match="whole non-zero pages"):
        write([(0x1000, b"x" * 100)])
    with pytest.raises(ValueError, match="whole non-zero pages"):
        write([(0x1001, bytes(PAGE))])
    with pytest.raises(ValueError, match="overlaps"):
        write([(0x2000, bytes(2 * PAGE)), (0x3000, bytes(PAGE))])
    with pytest.raises(ValueError, match="outside every VMA"):
        write([(0x10000, bytes(PAGE))], within=[(0x1000, 0x3000)])
    write([(0x1000, bytes(PAGE)), (0x2000, bytes(PAGE))],             # touching VMAs: fine
          within=[(0x1000, 0x2000), (0x2000, 0x3000)])


# -- bad images: ImageError and nothing else ------------------------------------------


def _entry_boundaries(data, common):
    """Offsets where an image may end between entries (walked independently)."""
    pos = 8 if common else 4
    out = [pos]
    while pos + 4 <= len(data):
        pos += 4 + struct.unpack_from("<I", data, pos)[0]
        out.append(pos)
    assert pos == len(data)
    return out


@needs_4k
@pytest.mark.parametrize("name", sorted(READ_IMAGES))
def test_truncated_images(fixture_copy, name):
    path = fixture_copy / name
    data = path.read_bytes()
    boundaries = _entry_boundaries(data, name != "inventory.img")
    files_ok = []
    for cut in range(len(data)):
        path.write_bytes(data[:cut])
        if name == "files.img" and cut in boundaries and cut >= boundaries[2]:
            # entries after id 2 (the memfd) are not needed: a shorter files.img is valid
            assert images.read_dump(fixture_copy).shmid_of(_vma_at(SHARED)) == 1112
            files_ok.append(cut)
            continue
        with pytest.raises(ImageError) as err:
            images.read_dump(fixture_copy)
        assert str(fixture_copy) in str(err.value), (cut, str(err.value))
    assert files_ok == (boundaries[2:-1] if name == "files.img" else [])


def _vma_at(start):
    return [v for v in images.read_dump(FIXTURE).vmas if v.start == start][0]


@needs_4k
@pytest.mark.parametrize("name,which", [(n, w) for n in sorted(READ_IMAGES) for w in (0, 1)
                                        if not (n == "inventory.img" and w == 1)])
def test_flipped_magic(fixture_copy, name, which):
    """which: 0 the first magic (IMG_COMMON_MAGIC; inventory's own), 1 the image's own."""
    path = fixture_copy / name
    data = bytearray(path.read_bytes())
    data[which * 4 + 1] ^= 0x40
    path.write_bytes(data)
    with pytest.raises(ImageError, match=r"magic .* expected|first magic"):
        images.read_dump(fixture_copy)


@needs_4k
@pytest.mark.parametrize("pages,delta", [("pages-2.img", -PAGE), ("pages-1.img", -PAGE),
                                         ("pages-2.img", +PAGE), ("pages-1.img", -1)])
def test_pages_file_wrong_size(fixture_copy, pages, delta):
    path = fixture_copy / pages
    size = path.stat().st_size
    if delta < 0:
        os.truncate(path, size + delta)
    else:
        with open(path, "ab") as f:
            f.write(bytes(delta))
    with pytest.raises(ImageError, match="too short" if delta < 0 else "extra bytes") as err:
        images.read_dump(fixture_copy)
    assert pages in str(err.value)


def _rewrite_pagemap(directory, entries):
    """Replace pagemap-17730.img by *entries* ((vaddr, nr)), pages-2.img to fit."""
    head = {"pages_id": 2}
    body = [{"vaddr": v, "compat_nr_pages": nr, "flags": images.PE_PRESENT} for v, nr in entries]
    (directory / "pagemap-17730.img").write_bytes(images.encode_image("pagemap", [head] + body))
    os.truncate(directory / "pages-2.img", sum(nr for _, nr in entries) * PAGE)


@needs_4k
@pytest.mark.parametrize("entries,message", [
    ([(PRIV, 4), (PRIV + 3 * PAGE, 2)], "overlaps"),                 # overlapping
    ([(PRIV + 8 * PAGE, 1), (PRIV, 1)], "overlaps or precedes"),     # out of order
    ([(PRIV, 1), (0x7F1961900000, 1)], "outside every VMA"),         # in the gap after priv
    ([(PRIV_END - PAGE, 2)], "outside every VMA"),                  # runs past priv's end
    ([(SHARED, 1)], "outside every VMA"),                           # a shmem VMA's address
    ([(0x1000, 1)], "outside every VMA"),                           # below every VMA
    ([(PRIV + 100, 1)], "not page-aligned"),
    ([(PRIV, 0)], "no pages"),
])
def test_inconsistent_pagemap(fixture_copy, entries, message):
    _rewrite_pagemap(fixture_copy, entries)
    with pytest.raises(ImageError, match=message) as err:
        images.read_dump(fixture_copy)
    assert "pagemap-17730.img" in str(err.value)


def test_check_pagemap_direct():
    run = lambda v, nr: images.PageRun(v, None, None, nr, 0)       # noqa: E731
    images.check_pagemap([run(0x1000, 1), run(0x2000, 2)],
                         [(0x1000, 0x2000), (0x2000, 0x4000)], "x")
    with pytest.raises(ImageError, match="x: entry 1 .* overlaps"):
        images.check_pagemap([run(0x1000, 2), run(0x2000, 1)], [(0, 0x10000)], "x")
    with pytest.raises(ImageError, match="outside"):
        images.check_pagemap([run(0x1000, 2)], [(0x1000, 0x2000), (0x3000, 0x4000)], "x")


def _frame(kind_magic, *messages, common=True):
    head = (struct.pack("<I", images.IMG_COMMON_MAGIC) if common else b"") + \
        struct.pack("<I", kind_magic)
    return head + b"".join(struct.pack("<I", len(m)) + m for m in messages)


@pytest.mark.parametrize("body,message", [
    (b"\x0a\x01\x00", "wire type 2"),              # vaddr as length-delimited
    (b"\x08\x80", "runs past the end"),             # varint cut short
    (b"\x08" + b"\xff" * 11, "longer than 10 bytes"),
    (b"\x0b\x00", "wire type 3"),                   # a group: never in CRIU images
    (b"\x08\x00\x3a\x05ab", "needs 5 bytes"),       # unknown field 7, length past the end
    (b"\x10\x01", "required field 'vaddr'"),
    (b"\x00\x00", "field number 0"),
])
def test_malformed_messages(body, message):
    data = _frame(images.PAGEMAP_MAGIC, b"\x08\x01", body)
    with pytest.raises(ImageError, match=message):
        images.decode_image(data, "pagemap", "pm.img")
    with pytest.raises(ImageError, match=message):
        images._pagemap_entries(data, "pm.img")


def test_unknown_fields_are_skipped():
    # fields 6 (varint), 7 (bytes), 8 (fixed64), 9 (fixed32) are unknown to pagemap_entry
    body = (b"\x08\x80\x20\x10\x02\x30\x05\x3a\x02hi\x41" + bytes(8) + b"\x4d" + bytes(4))
    data = _frame(images.PAGEMAP_MAGIC, b"\x08\x01", body)
    assert images.decode_image(data, "pagemap")[1] == {"vaddr": 0x1000, "compat_nr_pages": 2}
    assert images._pagemap_entries(data, "x")[1] == [(0x1000, 2, images.PE_PRESENT)]


@needs_4k
def test_random_corruption_gives_image_error_or_a_dump(fixture_copy):
    rnd = random.Random(7)
    originals = {name: (fixture_copy / name).read_bytes() for name in READ_IMAGES}
    outcomes = {"ok": 0, "error": 0}
    for _ in range(600):
        name = rnd.choice(sorted(originals))
        data = bytearray(originals[name])
        for _ in range(rnd.randint(1, 3)):
            data[rnd.randrange(len(data))] = rnd.randrange(256)
        (fixture_copy / name).write_bytes(data)
        try:
            images.read_dump(fixture_copy)
            outcomes["ok"] += 1
        except ImageError:
            outcomes["error"] += 1
        (fixture_copy / name).write_bytes(originals[name])
    assert outcomes["error"] > 100 and outcomes["ok"] > 10, outcomes


# -- CRIU 4.1.1 dumping a live child ----------------------------------------------------

CHILD = r"""
import mmap, os, sys
priv = mmap.mmap(-1, 64 << 12, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(0, 48 << 12, 4096):
    priv[i:i + 4096] = bytes([(i >> 12) & 0xff]) * 4096     # pages 48-63: a hole
shared = mmap.mmap(-1, 8 << 12, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)
shared[:] = b"\x5a" * (8 << 12)
import ctypes
addr = lambda m: ctypes.addressof(ctypes.c_char.from_buffer(m))
with open(sys.argv[1] + ".tmp", "w") as f:
    f.write(f"{addr(priv)} {addr(shared)}\n")
os.rename(sys.argv[1] + ".tmp", sys.argv[1])
import signal
while True:
    signal.pause()
"""


def _clip(run, start, end):
    lo, hi = max(run.vaddr, start), min(run.end, end)
    if lo >= hi:
        return None
    return run._replace(vaddr=lo, nr_pages=(hi - lo) // PAGE, offset=run.offset + lo - run.vaddr)


def _criu_binary():
    if os.environ.get("PVMMAP_CRIU"):
        return os.environ["PVMMAP_CRIU"]
    if os.geteuid() != 0:
        pytest.skip("criu dump needs root")
    r = subprocess.run([str(TOP / "tools" / "build-criu")], capture_output=True, text=True)
    if r.returncode != 0:
        lines = r.stderr.strip().splitlines() or ["tools/build-criu failed"]
        pytest.skip(lines[-1])
    # CRIU creates network namespaces at start (kerndat): a kernel without
    # them (CONFIG_NET_NS, e.g. kernel/'s test VM) cannot run it at all.
    if subprocess.run(["unshare", "--net", "true"], capture_output=True).returncode != 0:
        pytest.skip("this kernel has no network namespaces (CONFIG_NET_NS), which "
                    "CRIU needs to start")
    return r.stdout.strip()


def _criu_dump(criu, pid, dump_dir):
    dump_dir.mkdir()
    r = subprocess.run([criu, "dump", "-t", str(pid), "-D", str(dump_dir),
                        "--leave-running", "-o", "dump.log", "-v4"],
                       capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        log = (dump_dir / "dump.log").read_text(errors="replace").splitlines()
        errors = [line for line in log if "Error" in line][-5:]
        pytest.fail(f"criu dump failed ({r.returncode}): {errors or r.stderr[-500:]}")


@pytest.fixture
def live_child(tmp_path):
    """A session-leader child with CHILD's layout: (Popen, priv_addr, shared_addr)."""
    ready = tmp_path / "ready"
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ready)], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             close_fds=True, start_new_session=True, cwd=tmp_path)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert child.poll() is None and time.monotonic() < deadline, "child did not start"
            time.sleep(0.02)
        priv_addr, shared_addr = map(int, ready.read_text().split())
        time.sleep(0.1)
        assert child.poll() is None, f"child exited with {child.returncode}"
        yield child, priv_addr, shared_addr
    finally:
        child.kill()
        child.wait()


@needs_4k
def test_criu_411_dump_of_a_live_child(tmp_path, live_child):
    criu = _criu_binary()
    child, priv_addr, shared_addr = live_child
    dump_dir = tmp_path / "dump"
    _criu_dump(criu, child.pid, dump_dir)
    dump = images.read_dump(dump_dir)
    assert dump.pid == child.pid

    # The kernel may merge priv with the interpreter's anonymous VMAs next
    # to it, so look at its range, not at a VMA of its own.
    priv_end = priv_addr + 64 * PAGE
    (priv,) = [v for v in dump.vmas if v.start <= priv_addr and priv_end <= v.end]
    runs = dump.pagemap.runs_in(priv_addr, priv_end)
    assert runs and runs[-1].end <= priv_addr + 48 * PAGE       # the hole has no pages
    data = bytearray(64 * PAGE)
    for run in runs:
        data[run.vaddr - priv_addr:run.end - priv_addr] = dump.read(run)
    assert data == b"".join(bytes([i]) * PAGE for i in range(48)) + bytes(16 * PAGE)

    # every run of memory the interpreter no longer writes equals /proc/PID/mem
    checked = 0
    with open(f"/proc/{child.pid}/mem", "rb") as mem:
        for vma in dump.vmas:
            if vma.start >= 1 << 47 or (vma.prot & 2 and vma is not priv):
                continue              # [vsyscall]; writable: may have changed since
            for run in dump.pages_of(vma):
                if vma is priv:
                    run = _clip(run, priv_addr, priv_end)
                if run is None or run.path is None:
                    continue
                mem.seek(run.vaddr)
                assert dump.read(run) == mem.read(run.nr_pages * PAGE), hex(run.vaddr)
                checked += run.nr_pages
    assert checked >= 48
    shared = _vma(dump, shared_addr)
    assert dump.shmid_of(shared) in dump.shmem
    assert _gather(dump, shared) == b"\x5a" * (8 * PAGE)


RESTORE = r"""
import ctypes, os, signal, subprocess, sys
# PR_SET_CHILD_SUBREAPER: the task `criu restore -d` leaves behind becomes ours to reap
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
criu, directory, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
r = subprocess.run([criu, "restore", "-D", directory, "-d", "-o", "restore.log", "-v4"])
if r.returncode:
    sys.exit(f"criu restore failed with {r.returncode}, see {directory}/restore.log")
try:
    with open(f"/proc/{pid}/mem", "rb") as mem:
        for spec in sys.argv[4:]:
            start, length = (int(x, 16) for x in spec.split(":"))
            mem.seek(start)
            sys.stdout.buffer.write(mem.read(length))
finally:
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
"""


@needs_4k
def test_criu_411_restores_from_our_pagemaps(tmp_path, live_child):
    """CRIU 4.1.1 (which reads nr_pages from field 2 only) restores a process
    from pagemap/pages images that write_pagemap rewrote, with new contents
    in the private region so the restored memory can only come from ours."""
    criu = _criu_binary()
    child, priv_addr, shared_addr = live_child
    dump_dir = tmp_path / "dump"
    _criu_dump(criu, child.pid, dump_dir)
    child.kill()
    child.wait()                                  # restore needs the pid free

    dump = images.read_dump(dump_dir)
    priv_end = priv_addr + 64 * PAGE
    new_priv = bytes((i * 13 + 5) & 0xFF for i in range(48 * PAGE))

    def contents(run):
        data = bytearray(dump.read(run))
        lo, hi = max(run.vaddr, priv_addr), min(run.end, priv_addr + 48 * PAGE)
        if lo < hi:
            data[lo - run.vaddr:hi - run.vaddr] = new_priv[lo - priv_addr:hi - priv_addr]
        return bytes(data)

    for pm in [dump.pagemap, *dump.shmem.values()]:
        assert all(r.path is not None for r in pm.runs)
        runs = [(r.vaddr, contents(r) if pm is dump.pagemap else dump.read(r)) for r in pm.runs]
        old = Path(pm.path).read_bytes()
        with open(pm.path, "wb") as pmf, open(pm.pages_path, "wb") as pgf:
            images.write_pagemap(pmf, pgf, pm.pages_id, runs)
        assert Path(pm.path).read_bytes() != old    # ours (fields 2 and 5), not CRIU's
    mm_path = dump_dir / f"mm-{child.pid}.img"
    mm_path.write_bytes(images.encode_mm(dump.mm))
    assert images.read_dump(dump_dir).vmas == dump.vmas

    r = subprocess.run([sys.executable, "-c", RESTORE, criu, str(dump_dir), str(child.pid),
                        f"{priv_addr:x}:{64 * PAGE:x}", f"{shared_addr:x}:{8 * PAGE:x}"],
                       capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr.decode(errors="replace")[-800:]
    assert r.stdout[:64 * PAGE] == new_priv + bytes(16 * PAGE)
    assert r.stdout[64 * PAGE:] == b"\x5a" * (8 * PAGE)
