"""maps(), features(), backend selection."""
import os
import subprocess
import sys

import pytest

import pvmmap
from pvmmap._maps import Region, classify, read_smaps

from _helpers import region_at
from child import PAGE


def test_maps_classifies_the_child(source, datafile):
    path, _ = datafile
    s = source([dict(name="a", kind="anon", size=1 << 16),
                dict(name="sh", kind="shared", size=1 << 16),
                dict(name="fd", kind="memfd", size=1 << 16),
                dict(name="f", kind="file", size=1 << 16, path=path, fill="none"),
                dict(name="shm", kind="shm", size=1 << 16)])
    expect = {"a": "private-anon", "sh": "shared-anon", "fd": "memfd",
              "f": "private-file", "shm": "shared-file"}
    for name, kind in expect.items():
        r = region_at(s.pid, s.addr[name])
        assert r.kind == kind, (name, r)
        assert r.flags and "rd" in r.flags      # VmFlags were read
    assert region_at(s.pid, s.addr["f"]).path == path
    assert region_at(s.pid, s.addr["f"]).inode == os.stat(path).st_ino
    assert any(r.path == "[stack]" and r.kind == "private-anon"
               for r in pvmmap.maps(s.pid))


@pytest.mark.parametrize("perms,inode,path,flags,kind", [
    ("rw-p", 0, "[heap]", None, "private-anon"),
    ("r--p", 0, "[vvar]", None, "special"),
    ("rw-s", 5, "/SYSV00000000 (deleted)", None, "sysv-shm"),
    ("rw-s", 5, "/dev/zero (deleted)", None, "shared-anon"),
    ("rw-s", 5, "/anon_hugepage (deleted)", None, "hugetlb"),
    ("rw-s", 5, "/dev/mem", frozenset({"io", "pf"}), "special"),
    ("rw-s", 7, "/dev/dri/card0", frozenset({"mm"}), "special"),
    ("rw-s", 8, "/[aio] (deleted)", frozenset({"de"}), "special"),
    ("r-xp", 9, "/usr/lib/libc.so.6", None, "private-file"),
])
def test_classify(perms, inode, path, flags, kind):
    assert classify(perms, inode, path, flags) == kind


@pytest.mark.parametrize("path,plain", [
    ("", True), ("[heap]", True), ("/memfd:x (deleted)", True),
    ("/dev/zero (deleted)", True),
    ("/usr/lib/libc.so.6", True), ("/SYSV00000000 (deleted)", True),
    ("/[aio] (deleted)", False), ("anon_inode:[perf_event]", False),
    ("/dev/dri/card0", False), ("/dmabuf:", False), ("[anon:named]", False),
    ("/dev/shm/psm_1234", True),
    ("/sys/devices/pci0000:00/0000:00:02.0/resource0", False),
    ("/proc/bus/pci/00/02.0", False),
])
def test_plain_paths_need_no_smaps(path, plain):
    assert Region(0, 4096, "rw-s", 0, "00:01", 1, path).plain is plain


def test_read_smaps_of_a_range_reads_just_that_range(source):
    s = source([dict(name="a", kind="anon", size=1 << 16),
                dict(name="b", kind="shared", size=1 << 16)])
    lo = min(s.addr["a"], s.addr["b"])
    hi = max(s.addr["a"], s.addr["b"]) + (1 << 16)
    inside = read_smaps(s.pid, lo, hi)
    everything = read_smaps(s.pid)
    assert [r.start for r in inside] == [r.start for r in everything
                                         if r.end > lo and r.start < hi]
    assert all(any(r.start <= s.addr[n] < r.end for r in inside) for n in "ab")
    assert all(r.flags and "rd" in r.flags for r in inside)
    assert len(everything) > len(inside)


def test_range_readers_equal_the_whole_text_across_read_chunks(source, monkeypatch):
    """read_smaps and the pre-6.11 read_maps of a range skip the entries below
    it in C (csrc/maps.c, 1 MiB reads): with 3,000 VMAs the smaps text is
    several MiB, so entries are cut at chunk ends.  Each range reader gives
    exactly what the whole text gives for that range, field by field."""
    from pvmmap import _maps
    n = 3000
    s = source([dict(name="v", kind="anon", size=n * PAGE, vmas=n, fill="none"),
                dict(name="a", kind="anon", size=1 << 16)])
    monkeypatch.setattr(_maps, "_procmap_query", False)     # the maps text path
    whole_smaps, whole_maps = read_smaps(s.pid), _maps.read_maps(s.pid)
    fields = lambda r: (r.start, r.end, r.perms, r.offset, r.dev, r.inode, r.path,
                        r.kind, r.flags, r.pkey, r.rss)
    v = s.addr["v"]
    for lo, hi in [(v, v + PAGE), (v + 1500 * PAGE + 7, v + 1502 * PAGE),
                   (min(v, s.addr["a"]) + PAGE, max(v, s.addr["a"]) + 2 * PAGE),
                   (v + (n - 1) * PAGE, 1 << 47),
                   (PAGE, v + 2 * PAGE)]:
        want = [r for r in whole_smaps if r.end > lo and r.start < hi]
        assert [fields(r) for r in read_smaps(s.pid, lo, hi)] == [fields(r) for r in want]
        want = [r for r in whole_maps if r.end > lo and r.start < hi]
        got = _maps.read_maps(s.pid, lo, hi)
        assert [fields(r) for r in got] == [fields(r) for r in want] and got
    with open(f"/proc/{s.pid}/smaps") as f:
        assert len(f.read()) > 2 << 20


def test_address_space_end_is_the_kernels():
    """The last page below task_size() can be mapped; the one at it cannot."""
    import errno
    from pvmmap._features import task_size
    from _helpers import try_map_at
    end, page = task_size(), 4096
    got, err = try_map_at(end - page)
    assert got == end - page or err == errno.EEXIST
    assert try_map_at(end) == (None, errno.ENOMEM)
    with open("/proc/cpuinfo") as f:
        la57 = any(line.startswith("flags") and " la57" in line for line in f)
    if not la57:
        assert end == (1 << 47) - page


def test_features_say_why():
    f = pvmmap.features()
    assert isinstance(f.native, bool) and f.native_reason
    assert f.uffd in ("full", "user-mode-only", None) and f.uffd_reason
    assert f.map_files_reason and f.pagemap_scan_reason
    assert f.backend in ("native", "emulated")
    assert pvmmap.backend == f.backend


def python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120)


def test_bad_backend_value_names_the_choices():
    """Import works; the first call that picks a backend says what is wrong
    (tests/test_environment.py has every entry point and the CLI)."""
    out = python("import pvmmap; pvmmap.backend", PVMMAP_BACKEND="fast")
    assert out.returncode != 0
    assert "ConfigError: PVMMAP_BACKEND='fast'" in out.stderr
    assert "auto, native, emulated" in out.stderr


def test_emulated_backend_can_be_forced():
    out = python("import pvmmap; print(pvmmap.backend)", PVMMAP_BACKEND="emulated")
    assert out.stdout.strip() == "emulated"


def test_procmap_query_gives_what_the_maps_text_gives(source, datafile, monkeypatch):
    """read_maps of a range by PROCMAP_QUERY (Linux 6.11+) equals the parse
    of the maps text, field by field, over every kind; the text path is
    what older kernels take."""
    from pvmmap import _maps
    path, _ = datafile
    s = source([dict(name="a", kind="anon", size=1 << 16),
                dict(name="sh", kind="shared", size=1 << 16),
                dict(name="fd", kind="memfd", size=1 << 16),
                dict(name="f", kind="file", size=1 << 16, path=path, offset=1 << 16,
                     fill="none"),
                dict(name="shm", kind="shm", size=1 << 16)])
    lo, hi = min(s.addr[n] for n in ("a", "sh", "fd", "f", "shm")), 1 << 47
    queried = _maps._query_maps(s.pid, lo, hi)
    if queried is None:
        pytest.skip("no PROCMAP_QUERY on this kernel (Linux < 6.11)")
    monkeypatch.setattr(_maps, "_procmap_query", False)
    text = _maps.read_maps(s.pid, lo, hi)
    fields = lambda r: (r.start, r.end, r.perms, r.offset, r.dev, r.inode, r.path, r.kind)
    assert [fields(r) for r in queried] == [fields(r) for r in text]
    assert {"private-anon", "shared-anon", "memfd", "private-file",
            "shared-file"} <= {r.kind for r in queried}
