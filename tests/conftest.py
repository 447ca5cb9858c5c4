import os
import tempfile

import pytest

import pvmmap
from child import Source

MiB = 1 << 20


def _factory(create, release, give=lambda obj: obj):
    """A fixture body: yields a maker that calls create() and returns
    give() of it, and release()s all it made after the test."""
    made = []

    def make(*args, **kw):
        made.append(create(*args, **kw))
        return give(made[-1])

    yield make
    for obj in made:
        release(obj)


@pytest.fixture
def source():
    """Factory: source(spec) spawns a child with the regions in `spec` (see
    tests/child.py) and reaps it after the test."""
    yield from _factory(Source, Source.close)


@pytest.fixture
def clones():
    """Factory: clones(pid, addr, length, **kw) is pvmmap.clone(); every
    Mapping it made is closed after the test."""
    yield from _factory(pvmmap.clone, pvmmap.Mapping.close)


@pytest.fixture
def raw_maps():
    """Factory for process_vm_mmap() results, unmapped after the test."""
    def create(*args, **kw):
        return pvmmap.process_vm_mmap(*args, **kw), args[2]

    yield from _factory(create, lambda made: pvmmap.munmap(*made),
                        give=lambda made: made[0])


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
