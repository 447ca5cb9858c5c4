"""Hostile CRIU images through the whole reader: pvmmap.criu.open() and
Image.mappings() on seeded, counted mutations of CRIU 4.2's own dump
(tests/data/criu-dump-v4).

Each case must end in one of two ways: ImageError (a ValueError) whose
message names the directory, or a dump whose every Mapping is exactly its
VMA's size and holds, at every run, the bytes the pages file has there.
Never another exception, never a crash, and no fd or mapping left behind.

Reproduce: PVMMAP_HOSTILE_SEED=N PVMMAP_HOSTILE_CASES=M pytest -q
tests/test_hostile_images.py (defaults: seed 1, 2000 random cases, plus
the systematic ones).
"""

import errno
import os
import random
import shutil
import struct

import pytest

import pvmmap
from pvmmap import criu
from pvmmap.criu import ImageError, images

from _helpers import leftovers, own_state
from test_criu_images import FIXTURE, READ_IMAGES, _entry_boundaries

PAGE = 4096
SEED = int(os.environ.get("PVMMAP_HOSTILE_SEED", "1"))
CASES = int(os.environ.get("PVMMAP_HOSTILE_CASES", "2000"))
PAGES_FILES = ("pages-1.img", "pages-2.img")

needs_4k = pytest.mark.skipif(pvmmap._native.PAGESIZE != PAGE,
                              reason="the fixture has 4 KiB pages")

# Values a hostile image puts in a field: zero, one, unaligned, the edges
# of 32 and 64 bits, and -1 (as int64: 2^64-1 on the wire).
HOSTILE = (0, 1, PAGE - 1, PAGE + 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 47,
           (1 << 63) - 1, 1 << 63, (1 << 64) - PAGE, (1 << 64) - 1)


def _open_and_check(directory):
    """'ok' or 'error': criu.open + mappings(), checked as the module says."""
    try:
        img = criu.open(directory)
    except ImageError as e:
        assert str(directory) in str(e), str(e)
        return "error"
    with img:
        try:
            maps = img.mappings()
        except ImageError as e:
            assert str(directory) in str(e), str(e)
            return "error"
        except OSError as e:
            # A VMA that fits the address space but not what is free of it
            # (start 0 and an end near the top): ENOMEM, naming the image.
            assert e.errno == errno.ENOMEM and str(directory) in str(e), str(e)
            return "enomem"
        for vma, m in zip(img.vmas, maps):
            assert m.length == vma.size, (vma, m.length)
            if not m.prot & pvmmap._native.PROT_READ:
                m.mprotect(pvmmap._native.PROT_READ)
            for run in img.dump.pages_of(vma):
                if run.path is None:
                    continue
                # the first and the last page of every run: where an offset
                # or a length off by anything would show
                with open(run.path, "rb") as f:
                    for page in {0, run.nr_pages - 1}:
                        want = os.pread(f.fileno(), PAGE, run.offset + page * PAGE)
                        at = run.vaddr - vma.start + page * PAGE
                        assert m[at:at + PAGE] == want, (vma, run, page)
    return "ok"


@pytest.fixture
def dump_dir(tmp_path):
    dst = tmp_path / "dump"
    shutil.copytree(FIXTURE, dst, ignore=shutil.ignore_patterns("crit-*", "*.md"))
    return dst


def _fields(kind, data):
    """(entry index, path of keys, value) of every integer field of an image."""
    out = []

    def walk(i, path, value):
        if isinstance(value, bool):
            return
        if isinstance(value, int):
            out.append((i, path, value))
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(i, path + (k,), v)
        elif isinstance(value, list):
            for j, v in enumerate(value):
                walk(i, path + (j,), v)

    for i, entry in enumerate(images.decode_image(data, kind)):
        walk(i, (), entry)
    return out


def _set_field(kind, data, i, path, value):
    """The image with field path of entry i set to value, or None if the
    codec cannot encode it (a negative value in an unsigned field)."""
    entries = images.decode_image(data, kind)
    node = entries[i]
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    try:
        return images.encode_image(kind, entries)
    except (ValueError, OverflowError, struct.error):
        return None


class _Mutator:
    """Seeded mutations of the fixture, applied to a copy in directory."""

    def __init__(self, directory, rnd):
        self.dir = directory
        self.rnd = rnd
        self.orig = {n: (directory / n).read_bytes() for n in list(READ_IMAGES)}
        self.sizes = {n: (directory / n).stat().st_size for n in PAGES_FILES}
        self.fields = {n: _fields(READ_IMAGES[n], d) for n, d in self.orig.items()}

    def restore(self):
        for n, d in self.orig.items():
            (self.dir / n).write_bytes(d)
        for n, size in self.sizes.items():
            p = self.dir / n
            if not p.exists() or p.stat().st_size != size:
                shutil.copyfile(FIXTURE / n, p)

    def write(self, name, data):
        (self.dir / name).write_bytes(data)

    def random_case(self):
        """Apply one random mutation; return its label."""
        rnd = self.rnd
        how = rnd.choice(("truncate", "flip", "field", "field", "field", "magic",
                          "pagemap", "pages", "missing"))
        name = rnd.choice(sorted(self.orig))
        data = self.orig[name]
        if how == "truncate":
            self.write(name, data[:rnd.randrange(len(data))])
        elif how == "flip":
            b = bytearray(data)
            for _ in range(rnd.randint(1, 4)):
                b[rnd.randrange(len(b))] ^= 1 << rnd.randrange(8)
            self.write(name, bytes(b))
        elif how == "field":
            i, path, _ = rnd.choice(self.fields[name])
            new = _set_field(READ_IMAGES[name], data, i, path, rnd.choice(HOSTILE))
            if new is None:
                return "field-unencodable"
            self.write(name, new)
        elif how == "magic":
            b = bytearray(data)
            at = rnd.choice((0, 4) if name != "inventory.img" else (0,))
            b[at:at + 4] = struct.pack("<I", rnd.getrandbits(32))
            self.write(name, bytes(b))
        elif how == "pagemap":
            self.pagemap_case()
        elif how == "pages":
            p = self.dir / rnd.choice(PAGES_FILES)
            os.truncate(p, max(0, p.stat().st_size + rnd.choice((-1, -PAGE, 1, PAGE))))
        else:
            os.unlink(self.dir / rnd.choice(sorted(self.orig) + list(PAGES_FILES)))
        return how

    def pagemap_case(self):
        """Entries overlapping, outside every VMA, or past the pages file's end."""
        rnd = self.rnd
        name = rnd.choice(("pagemap-17730.img", "pagemap-shmem-1112.img"))
        entries = images.decode_image(self.orig[name], "pagemap")
        head, body = entries[0], entries[1:]
        e = rnd.choice(body)
        what = rnd.choice(("overlap", "outside", "past-end", "duplicate", "huge"))
        if what == "overlap":
            e["vaddr"] = max(0, e["vaddr"] + PAGE * rnd.randint(-3, 3))
        elif what == "outside":
            e["vaddr"] = rnd.choice((0, PAGE, 0x7F1961900000, 1 << 46, (1 << 64) - PAGE))
        elif what == "past-end":
            body[-1]["nr_pages"] = body[-1].get("nr_pages", 0) + rnd.randint(1, 4)
        elif what == "duplicate":
            body.insert(body.index(e), dict(e))
        else:
            e["nr_pages"] = rnd.choice(HOSTILE[1:])
        self.write(name, images.encode_image("pagemap", [head] + body))


@needs_4k
def test_every_truncation_at_every_record_boundary(dump_dir):
    """Each image cut at each of its entry boundaries, and each pages file
    cut at each page: ImageError naming the directory, or (files.img's
    entries past the memfd are not needed) a valid dump."""
    before = own_state()
    m = _Mutator(dump_dir, random.Random(SEED))
    counts = {"ok": 0, "error": 0, "enomem": 0}
    for name, data in m.orig.items():
        for cut in _entry_boundaries(data, name != "inventory.img")[:-1] + [0, 2, 6]:
            m.write(name, data[:cut])
            counts[_open_and_check(dump_dir)] += 1
            m.restore()
    for name in PAGES_FILES:
        size = m.sizes[name]
        for cut in list(range(0, size, 64 * PAGE)) + [size - PAGE, size - 1]:
            os.truncate(dump_dir / name, cut)
            assert _open_and_check(dump_dir) == "error", (name, cut)
            counts["error"] += 1
            m.restore()
    assert leftovers(before) == []
    assert counts["error"] > 60, counts
    # only files.img may be cut between entries and still be a dump
    assert counts["ok"] <= 3, counts


@needs_4k
def test_every_integer_field_set_to_every_hostile_value(dump_dir):
    """Every integer field of every image read, set in turn to each value
    of HOSTILE (huge, negative as int64, unaligned, zero)."""
    before = own_state()
    m = _Mutator(dump_dir, random.Random(SEED))
    counts = {"ok": 0, "error": 0, "enomem": 0, "unencodable": 0}
    for name, fields in m.fields.items():
        for i, path, _ in fields:
            if "mm_saved_auxv" in path:
                continue                # 40 opaque words the reader never uses
            for value in HOSTILE:
                new = _set_field(READ_IMAGES[name], m.orig[name], i, path, value)
                if new is None:
                    counts["unencodable"] += 1
                    continue
                m.write(name, new)
                counts[_open_and_check(dump_dir)] += 1
                m.write(name, m.orig[name])
    assert leftovers(before) == []
    assert counts["error"] > 200 and counts["ok"] > 100, counts
    print(f"field sweep: {counts}")


# inventory.img is optional (CRIU's own reader too); without pstree.img the
# pid is the only mm-PID.img's
OPTIONAL = ("inventory.img", "pstree.img")


@needs_4k
def test_missing_files(dump_dir):
    before = own_state()
    for name in sorted(READ_IMAGES) + list(PAGES_FILES):
        shutil.move(dump_dir / name, dump_dir.parent / name)
        try:
            if name in OPTIONAL:
                assert _open_and_check(dump_dir) == "ok", name
                continue
            with pytest.raises(ImageError, match="missing") as e:
                criu.open(dump_dir)
            assert name in str(e.value), str(e.value)
        finally:
            shutil.move(dump_dir.parent / name, dump_dir / name)
    assert leftovers(before) == []


@needs_4k
def test_random_mutations(dump_dir):
    """CASES seeded random mutations (PVMMAP_HOSTILE_SEED): truncations,
    bit flips, hostile field values, magics, pagemap entries overlapping,
    outside every VMA or past the pages file, resized pages files, a
    missing file."""
    rnd = random.Random(SEED)
    before = own_state()
    nfds = len(os.listdir("/proc/self/fd"))
    m = _Mutator(dump_dir, rnd)
    counts = {}
    for case in range(CASES):
        how = m.random_case()
        outcome = _open_and_check(dump_dir) if how != "field-unencodable" else "skipped"
        counts[(how, outcome)] = counts.get((how, outcome), 0) + 1
        m.restore()
        assert len(os.listdir("/proc/self/fd")) == nfds, (case, how)
    assert leftovers(before) == []
    errors = sum(n for (_, o), n in counts.items() if o == "error")
    assert errors > CASES // 2, counts
    print(f"seed {SEED}: {CASES} cases: {sorted(counts.items())}")
