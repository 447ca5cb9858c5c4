"""The command line, run as a user runs it."""
import subprocess
import sys

import pytest

from child import Source


def run(*args):
    return subprocess.run([sys.executable, "-m", "pvmmap", *args],
                          capture_output=True, text=True, timeout=300)


def test_demo_verifies_every_region():
    out = run("demo")
    assert out.returncode == 0, out.stderr
    assert "all regions verified" in out.stdout
    for kind in ("private-anon", "shared-anon", "memfd", "private-file"):
        assert kind in out.stdout
    assert "shared both ways" in out.stdout and "snapshot" in out.stdout


def test_maps_lists_regions_with_kinds():
    s = Source([dict(name="sh", kind="shared", size=1 << 16)])
    try:
        out = run("maps", str(s.pid))
    finally:
        s.close()
    assert out.returncode == 0, out.stderr
    line = [l for l in out.stdout.splitlines() if l.startswith(f"{s.addr['sh']:012x}")]
    assert line and "shared-anon" in line[0] and "rw-s" in line[0]


def test_maps_of_missing_process_fails_clearly():
    out = run("maps", str(0x3FFFFFFF))
    assert out.returncode == 1 and "No such process" in out.stderr


def test_features_names_each_feature():
    out = run("features")
    assert out.returncode == 0
    for name in ("backend", "native", "uffd", "map_files", "pagemap_scan"):
        assert name in out.stdout


@pytest.mark.parametrize("args", [["bogus"], ["maps"]])
def test_bad_usage_exits_2(args):
    assert run(*args).returncode == 2
