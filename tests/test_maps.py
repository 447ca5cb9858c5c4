"""maps(), features(), backend selection."""
import os
import subprocess
import sys

import pytest

import pvmmap
from pvmmap._maps import classify


def test_maps_classifies_the_sample(source, datafile):
    path, _ = datafile
    s = source([dict(name="a", kind="anon", size=1 << 16),
                dict(name="sh", kind="shared", size=1 << 16),
                dict(name="fd", kind="memfd", size=1 << 16),
                dict(name="f", kind="file", size=1 << 16, path=path, fill="none"),
                dict(name="shm", kind="shm", size=1 << 16)])
    by_start = {r.start: r for r in pvmmap.maps(s.pid)}
    expect = {"a": "private-anon", "sh": "shared-anon", "fd": "memfd",
              "f": "private-file", "shm": "shared-file"}
    for name, kind in expect.items():
        r = by_start[s.addr[name]]
        assert r.kind == kind, (name, r)
        assert r.flags and "rd" in r.flags      # VmFlags were read
    assert by_start[s.addr["f"]].path == path
    assert by_start[s.addr["f"]].inode == os.stat(path).st_ino
    assert any(r.path == "[stack]" and r.kind == "private-anon"
               for r in by_start.values())


@pytest.mark.parametrize("perms,inode,path,flags,kind", [
    ("rw-p", 0, "[heap]", None, "private-anon"),
    ("r--p", 0, "[vvar]", None, "special"),
    ("rw-s", 5, "/SYSV00000000 (deleted)", None, "sysv-shm"),
    ("rw-s", 5, "/dev/zero (deleted)", None, "shared-anon"),
    ("rw-s", 5, "/anon_hugepage (deleted)", None, "hugetlb"),
    ("rw-s", 5, "/dev/mem", frozenset({"io", "pf"}), "special"),
    ("r-xp", 9, "/usr/lib/libc.so.6", None, "private-file"),
])
def test_classify(perms, inode, path, flags, kind):
    assert classify(perms, inode, path, flags) == kind


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
    out = python("import pvmmap", PVMMAP_BACKEND="fast")
    assert out.returncode != 0
    assert "auto, native, emulated" in out.stderr


def test_emulated_backend_can_be_forced():
    out = python("import pvmmap; print(pvmmap.backend)", PVMMAP_BACKEND="emulated")
    assert out.stdout.strip() == "emulated"
