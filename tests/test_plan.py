"""_api.plan_clone (what `pvmmap check` shows) says what clone() does, on the
same inputs; pvmmap.maps() checks the process as clone() does."""
import errno
import os

import pytest

import pvmmap
from pvmmap._api import plan_clone
from child import PAGE, Source

from _helpers import kernel_thread, own_state, leftovers, zombie

NO_SUCH_PID = 0x3FFFFFFF


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    path = tmp_path_factory.mktemp("plan") / "data"
    path.write_bytes(os.urandom(8 * PAGE))
    s = Source([dict(name="a", kind="anon", size=4 * PAGE),
                dict(name="holed", kind="anon", size=4 * PAGE),
                dict(name="sh", kind="shared", size=4 * PAGE),
                dict(name="mf", kind="memfd", size=4 * PAGE),
                dict(name="f", kind="file", size=8 * PAGE, path=str(path),
                     fill=[1]),
                dict(name="ro", kind="anon", size=2 * PAGE, prot="r"),
                dict(name="none", kind="anon", size=2 * PAGE, prot="none"),
                dict(name="u", kind="anon", size=4 * PAGE)])
    try:
        s.unmap(s.addr["holed"] + 2 * PAGE, PAGE)
        s.register_uffd(s.addr["u"], 4 * PAGE)
        yield s
    finally:
        s.close()


def outcome(call):
    """("ok", parts) or ("error", errno, message) of call()."""
    try:
        return call()
    except OSError as e:
        return ("error", e.errno, str(e))


def cloned(*args, **kw):
    with pvmmap.clone(*args, **kw) as m:
        return ("ok", [(p.offset, p.length, p.kind, p.method) for p in m.parts])


def planned(*args, **kw):
    plan = plan_clone(*args, **kw)
    if plan.error:
        return ("error", plan.error.errno, str(plan.error))
    return ("ok", [(v.part.offset, v.part.length, v.part.kind, v.part.method)
                   for v in plan.parts])


def cases(s):
    vdso = next(r for r in pvmmap.maps(s.pid) if r.path == "[vdso]")
    a = s.addr
    return {
        "private anon": (s.pid, a["a"], 4 * PAGE),
        "unaligned": (s.pid, a["a"] + 5, PAGE),
        "shared anon": (s.pid, a["sh"], 4 * PAGE),
        "memfd": (s.pid, a["mf"], 4 * PAGE),
        "private file": (s.pid, a["f"], 8 * PAGE),
        "read-only": (s.pid, a["ro"], 2 * PAGE),
        "PROT_NONE": (s.pid, a["none"], 2 * PAGE),
        "hole": (s.pid, a["holed"], 4 * PAGE),
        "in a hole": (s.pid, a["holed"] + 2 * PAGE, PAGE),
        "vdso": (s.pid, vdso.start, vdso.size),
        "uffd": (s.pid, a["u"], 4 * PAGE),
        "length 0": (s.pid, a["a"], 0),
        "page 0": (s.pid, 0, PAGE),
        "pid 0": (0, a["a"], PAGE),
        "no such pid": (NO_SUCH_PID, a["a"], PAGE),
    }


@pytest.mark.parametrize("method", ["auto", "copy"])
@pytest.mark.parametrize("case", [
    "private anon", "unaligned", "shared anon", "memfd", "private file",
    "read-only", "PROT_NONE", "hole", "in a hole", "vdso", "uffd", "length 0",
    "page 0", "pid 0", "no such pid"])
def test_plan_says_what_clone_does(src, case, method):
    args = cases(src)[case]
    before = own_state()
    plan = outcome(lambda: planned(*args, method=method))
    assert leftovers(before) == []          # nothing mapped, nothing left open
    assert plan == outcome(lambda: cloned(*args, method=method))


def test_plan_of_a_kernel_thread_and_a_zombie_is_clones_error(src):
    with zombie() as z:
        for pid, err in ((kernel_thread(), errno.EINVAL), (z, errno.ESRCH)):
            args = (pid, src.addr["a"], PAGE)
            assert outcome(lambda: planned(*args)) == outcome(lambda: cloned(*args))
            assert outcome(lambda: planned(*args))[1] == err


def test_a_refused_range_gets_a_verdict_per_vma_and_hole(src):
    start = src.addr["holed"]
    plan = plan_clone(src.pid, start, 4 * PAGE)
    assert plan.error is not None and plan.error.errno == errno.EFAULT
    assert [(v.part.kind, v.error is None) for v in plan.parts] == [
        ("private-anon", True), ("hole", False), ("private-anon", True)]
    assert plan.parts[1].part.source == start + 2 * PAGE


def test_the_uffd_region_is_refused_with_clones_error(src):
    plan = plan_clone(src.pid, src.addr["u"], 4 * PAGE)
    (verdict,) = plan.parts
    assert verdict.error is not None and verdict.error.errno == errno.EOPNOTSUPP
    assert str(verdict.error) == str(plan.error)


def test_plan_says_how_each_object_is_reached(src):
    plan = plan_clone(src.pid, src.addr["sh"], 4 * PAGE)
    (verdict,) = plan.parts
    assert verdict.part.method == "share" and verdict.reason
    if pvmmap.features().map_files:
        assert "map_files" in verdict.reason


def test_plan_takes_the_methods_clone_takes(src):
    with pytest.raises(ValueError):
        plan_clone(src.pid, src.addr["a"], PAGE, method="bogus")
    plan = plan_clone(src.pid, src.addr["a"], PAGE, method="lazy")
    assert plan.ok and [v.part.method for v in plan.parts] == ["lazy"]


# ---- pvmmap.maps() checks the process as clone() does ----------------------

def test_maps_has_rss():
    regions = pvmmap.maps(os.getpid())
    assert all(r.rss is not None for r in regions)
    assert sum(r.rss for r in regions) > 0


def maps_error(pid):
    with pytest.raises(OSError) as e:
        pvmmap.maps(pid)
    return e.value.errno, type(e.value)


def clone_error(pid):
    with pytest.raises(OSError) as e:
        pvmmap.clone(pid, 0x10000, PAGE)
    return e.value.errno, type(e.value)


def test_maps_of_pid_0_a_kernel_thread_a_zombie_a_dead_pid_is_clones_error():
    with zombie() as z:
        for pid, err in ((0, errno.EINVAL), (-1, errno.EINVAL),
                         (kernel_thread(), errno.EINVAL), (z, errno.ESRCH),
                         (NO_SUCH_PID, errno.ESRCH)):
            assert maps_error(pid) == clone_error(pid)
            assert maps_error(pid)[0] == err
