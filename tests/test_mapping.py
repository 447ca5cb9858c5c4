"""The Mapping object: buffer protocol, indexing, close rules (CPython mmap's
state machine), detach, warnings, repr."""
import gc
import mmap

import numpy
import pytest

import pvmmap
from child import PAGE, page_bytes

MiB = 1 << 20


@pytest.fixture
def src(source):
    return source([dict(name="r", kind="anon", size=16 * PAGE, seed=3)])


@pytest.fixture
def m(src, clones):
    return clones(src.pid, src.addr["r"], 16 * PAGE)


def test_attributes(src, m):
    assert m.pid == src.pid and m.source_address == src.addr["r"]
    assert m.length == len(m) == 16 * PAGE
    assert m.kind == "private-anon" and m.prot == mmap.PROT_READ | mmap.PROT_WRITE
    assert not m.closed and m.address % PAGE == 0
    assert m.lost == 0
    assert m.parts[0].kind == "private-anon"


def test_memoryview_is_zero_copy(m):
    with memoryview(m) as view:
        view[5] = 0xAB
        assert m[5] == 0xAB
        m[6] = 0xCD
        assert view[6] == 0xCD
        assert not view.readonly and view.nbytes == len(m)


def test_numpy_frombuffer_shares_memory(m):
    arr = numpy.frombuffer(m, dtype=numpy.uint8)
    assert arr.ctypes.data == m.address
    assert bytes(arr[:PAGE]) == page_bytes(3, 0)
    arr[PAGE] = 7
    assert m[PAGE] == 7
    del arr


def test_indexing_and_slicing(m):
    page0 = page_bytes(3, 0)
    assert m[0] == page0[0] and m[-1] == page_bytes(3, 15)[-1]
    assert m[10:20] == page0[10:20]
    assert m[0:40:4] == page0[0:40:4]
    m[0:3] = b"abc"
    assert m[:3] == b"abc"
    with pytest.raises(IndexError):
        m[len(m)]
    with pytest.raises(ValueError):
        m[0:3] = b"ab"                  # sizes must match, as for memoryview


def test_tobytes_is_a_copy(m):
    data = m.tobytes()
    m[0] = (data[0] + 1) % 256
    assert data[0] != m[0]


def test_close_is_idempotent_and_checked(m):
    m.close()
    m.close()
    assert m.closed and "closed" in repr(m)
    for op in (lambda: m[0], lambda: m.tobytes(), lambda: memoryview(m),
               lambda: m.address, lambda: m.detach(), lambda: len(m),
               lambda: m.populate(), lambda: m.mprotect(mmap.PROT_READ),
               lambda: m[0:1], lambda: m.__enter__()):
        with pytest.raises(ValueError, match="closed"):
            op()


@pytest.mark.parametrize("name", ["address", "length", "pid", "source_address",
                                  "method", "kind", "prot", "parts", "stats", "lost"])
def test_every_attribute_but_closed_raises_after_close(m, name):
    getattr(m, name)                    # answers while open
    m.close()
    with pytest.raises(ValueError, match="closed"):
        getattr(m, name)
    assert m.closed is True


def test_close_refuses_while_exported(m):
    view = memoryview(m)
    with pytest.raises(BufferError, match="release memoryviews"):
        m.close()
    assert not m.closed
    arr = numpy.frombuffer(m, dtype=numpy.uint8)
    view.release()
    with pytest.raises(BufferError):
        m.close()
    del arr
    gc.collect()
    m.close()
    assert m.closed


def test_close_really_unmaps(src):
    m = pvmmap.clone(src.pid, src.addr["r"], 16 * PAGE)
    addr = m.address
    m.close()
    with open("/proc/self/maps") as f:
        spans = [[int(x, 16) for x in line.split()[0].split("-")] for line in f]
    assert not any(s <= addr < e for s, e in spans)


def test_context_manager(src):
    with pvmmap.clone(src.pid, src.addr["r"], PAGE) as m:
        assert m[:16] == page_bytes(3, 0)[:16]
    assert m.closed


def test_detach_keeps_the_memory_and_munmap_takes_what_it_returns(src):
    m = pvmmap.clone(src.pid, src.addr["r"] + 100, PAGE)
    length = m.length
    addr = m.detach()
    assert m.closed and addr % PAGE == 100
    import ctypes
    assert ctypes.string_at(addr, 16) == page_bytes(3, 0)[100:116]
    pvmmap.munmap(addr, length)         # unaligned: rounded out to both pages
    with open("/proc/self/maps") as f:
        spans = [[int(x, 16) for x in line.split()[0].split("-")] for line in f]
    base = addr - 100
    assert not any(s < base + 2 * PAGE and e > base for s, e in spans)


def test_indexing_reads_without_views(m):
    """m[i] and m[a:b] read the memory directly: no buffer export is left
    or needed, so close() works right after."""
    assert m[3] == page_bytes(3, 0)[3]
    assert m[-PAGE] == page_bytes(3, 15)[0]
    assert m[PAGE:PAGE + 8] == page_bytes(3, 1)[:8]
    assert m[5:2] == b""
    m.close()


def test_stats_have_one_key_per_fact(src, clones):
    m = clones(src.pid, src.addr["r"], 16 * PAGE, method="copy")
    assert set(m.stats) <= {"bytes_readv", "bytes_mem", "calls", "threads",
                            "lost_pages", "scan", "fill", "frozen_threads"}
    assert m.stats["fill"] == ("UFFDIO_COPY" if pvmmap.features().uffd else "direct")
    assert m.stats["bytes_readv"] + m.stats["bytes_mem"] == 16 * PAGE
    assert m.lost == m.stats["lost_pages"] == 0
    assert m.stats["scan"] in ("PAGEMAP_SCAN", "pagemap")


def test_unclosed_mapping_warns_and_is_unmapped(src):
    m = pvmmap.clone(src.pid, src.addr["r"], PAGE)
    addr = m.address
    with pytest.warns(ResourceWarning, match="unclosed"):
        del m
        gc.collect()
    with open("/proc/self/maps") as f:
        spans = [[int(x, 16) for x in line.split()[0].split("-")] for line in f]
    assert not any(s <= addr < e for s, e in spans)


def test_repr_says_what_it_is(m, src):
    r = repr(m)
    assert f"pid {src.pid}" in r and "private-anon" in r and "rw-" in r


def test_mapping_cannot_be_made_directly():
    with pytest.raises(TypeError, match="pvmmap.clone"):
        pvmmap.Mapping()


@pytest.fixture
def page_zero_allowed():
    """vm.mmap_min_addr = 0 for the test (root: CAP_SYS_RAWIO maps page 0)."""
    path = "/proc/sys/vm/mmap_min_addr"
    try:
        with open(path) as f:
            old = f.read().strip()
        with open(path, "w") as f:
            f.write("0")
    except OSError as e:
        pytest.skip(f"cannot set vm.mmap_min_addr ({e.strerror})")
    yield
    with open(path, "w") as f:
        f.write(old)


def test_a_clone_placed_at_address_zero_is_a_mapping_like_any(src, page_zero_allowed):
    """The kernel lets root place memory at 0: the Mapping must hold it,
    read it, say it is open, and unmap it on close."""
    m = pvmmap.clone(src.pid, src.addr["r"], 2 * PAGE, dest=0, fixed=True)
    try:
        assert m.address == 0 and not m.closed and "closed" not in repr(m)
        assert m.tobytes() == page_bytes(3, 0) + page_bytes(3, 1)
        assert m[:8] == page_bytes(3, 0)[:8] and m[1] == page_bytes(3, 0)[1]
    finally:
        m.close()
    assert m.closed
    with open("/proc/self/maps") as f:
        assert not any(line.startswith("00000000-") for line in f)
