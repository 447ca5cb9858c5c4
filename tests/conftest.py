import os
import tempfile

import pytest

import pvmmap
from pvmmap._sample import Source

MiB = 1 << 20


@pytest.fixture
def source():
    """Factory: source(spec) spawns a child with the regions in `spec` (see
    pvmmap._sample) and reaps it after the test."""
    made = []

    def make(spec, **kw):
        s = Source(spec, **kw)
        made.append(s)
        return s

    yield make
    for s in made:
        s.close()


@pytest.fixture
def clones():
    """Factory: clones(pid, addr, length, **kw) is pvmmap.clone(); every
    Mapping it made is closed after the test."""
    made = []

    def make(*args, **kw):
        m = pvmmap.clone(*args, **kw)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


@pytest.fixture
def raw_maps():
    """Factory for process_vm_mmap() results, unmapped after the test."""
    made = []

    def make(*args, **kw):
        addr = pvmmap.process_vm_mmap(*args, **kw)
        made.append((addr, args[2]))
        return addr

    yield make
    for addr, length in made:
        pvmmap.munmap(addr, length)


@pytest.fixture
def datafile():
    """A 4 MiB file of known random bytes: (path, bytes)."""
    fd, path = tempfile.mkstemp(prefix="pvmmap-test-")
    data = os.urandom(4 * MiB)
    os.write(fd, data)
    os.close(fd)
    yield path, data
    os.unlink(path)


def pytest_report_header(config):
    f = pvmmap.features()
    return [f"pvmmap backend: {f.backend} (native: {f.native_reason})",
            f"pvmmap uffd: {f.uffd}; map_files: {f.map_files}; "
            f"PAGEMAP_SCAN: {f.pagemap_scan}"]
