"""pvmmap.dump() into a destination that refuses: a read-only directory
(EACCES, as an ordinary user), a read-only filesystem (EROFS) and a full
one (ENOSPC; test_criu_dump has it too), as root with a tmpfs mounted in a
private mount namespace (unshare -m in a child).

Each: one OSError with that errno naming the pid and the directory; no
image and no temporary file left in the directory, and images an earlier
dump left there untouched; the source running again (not stopped, not
traced)."""

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

import pvmmap

from _helpers import NOBODY, leftovers, own_state, run_unprivileged, status_of

MiB = 1 << 20
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mount, setuid)")


def _source_runs(pid):
    state, tracer = status_of(pid)
    return state in ("S", "R") and tracer == 0


@needs_root
def test_read_only_directory_as_an_ordinary_user():
    """uid 65534 dumps its own child into a 0555 directory: EACCES."""
    d = tempfile.mkdtemp(prefix="pvmmap-ro-")
    try:
        os.chown(d, NOBODY, NOBODY)
        os.chmod(d, 0o555)

        def body():
            # a child of its own that maps only files this uid can read
            # (a fork of pytest maps the interpreter under /root)
            child = subprocess.Popen(["sleep", "60"])
            try:
                before = own_state()
                try:
                    pvmmap.dump(child.pid, d)
                    return {"errno": None}
                except OSError as e:
                    return {"errno": e.errno, "message": str(e), "listing": os.listdir(d),
                            "left": leftovers(before), "runs": _source_runs(child.pid),
                            "pid": child.pid}
            finally:
                child.kill()
                child.wait(30)

        got = run_unprivileged(body)
        assert got["errno"] == errno.EACCES, got
        assert d in got["message"] and f"pid {got['pid']}" in got["message"], got
        assert got["listing"] == [] and got["left"] == [] and got["runs"], got
    finally:
        os.chmod(d, 0o755)
        shutil.rmtree(d)


# Run in a child with its own mount namespace (unshare -m): a tmpfs
# mounted there is gone with it, whatever happens to the test.
IN_NAMESPACE = textwrap.dedent(r"""
    import errno, json, os, subprocess, sys
    sys.path.insert(0, sys.argv[3])
    import pvmmap
    from _helpers import leftovers, own_state, status_of
    opts, pid = sys.argv[1], int(sys.argv[2])
    d = "/mnt"
    subprocess.run(["mount", "--make-rprivate", "/"], check=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "pvmmap-test", d], check=True)
    # an earlier, whole dump of something else: must stay as it is
    with open(f"{d}/earlier.img", "wb") as f:
        f.write(b"x" * 4096)
    subprocess.run(["mount", "-o", "remount," + opts, d], check=True)
    before = own_state()
    out = {}
    try:
        pvmmap.dump(pid, d)
        out["errno"] = None
    except OSError as e:
        out.update(errno=e.errno, message=str(e))
    out["listing"] = sorted(os.listdir(d))
    with open(f"{d}/earlier.img", "rb") as f:
        out["earlier_intact"] = f.read() == b"x" * 4096
    out["left"] = leftovers(before)
    state, tracer = status_of(pid)
    out["runs"] = state in ("S", "R") and tracer == 0
    print(json.dumps(out))
""")


@needs_root
@pytest.mark.parametrize("opts,err", [("ro", errno.EROFS), ("rw", errno.ENOSPC)])
def test_read_only_or_full_filesystem(source, opts, err):
    if not shutil.which("unshare"):
        pytest.skip("no unshare(1) (util-linux)")
    s = source([{"name": "big", "kind": "anon", "size": 8 * MiB}])
    here = os.path.dirname(os.path.abspath(__file__))
    r = subprocess.run(["unshare", "-m", sys.executable, "-c", IN_NAMESPACE, opts,
                        str(s.pid), here], capture_output=True, text=True, timeout=120)
    if r.returncode and "mount" in r.stderr and not r.stdout:
        pytest.skip(f"cannot mount a tmpfs in a mount namespace: {r.stderr.strip()[-200:]}")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    assert got["errno"] == err, got
    assert "/mnt" in got["message"] and f"pid {s.pid}" in got["message"], got
    assert got["listing"] == ["earlier.img"] and got["earlier_intact"], got
    assert got["left"] == [] and got["runs"], got
    assert s.read(s.addr["big"], 16)
