"""Property tests (hypothesis) over the argument space of every entry point:
pvmmap.clone (each method, freeze on and off, dest/fixed/noreplace),
pvmmap.process_vm_mmap (+ munmap), pvmmap.plan_clone and, for a sample,
`pvmmap clone` on the command line, against one source with a random layout
(tests/child.py, seeded).  For every generated input:

- only the errnos docs/design.md documents for that entry point (ERRNOS),
  never another exception type, never a crash;
- the errno the contract's order of checks gives where it can be told from
  the input alone (expected_early), and EFAULT for a range over a hole;
- the same exception type and errno from every entry point where their
  contracts coincide (process_vm_mmap maps one VMA, clone may span several;
  plan_clone's verdict is what clone does);
- nothing left behind: fds, VMAs, threads (tests/_helpers.leftovers), the
  caller's memory at a FIXED destination untouched by a failed call, and the
  address space (VmSize) flat over a plain loop through every entry point;
- on success, the bytes of the clone equal the source's (/proc/PID/mem).

Profiles: a small derandomized one by default (developers); PVMMAP_FUZZ=ci
for CI (3,000 clone cases of 3 entry points each, about 20,000 flag
cases, 40 CLI runs).  PVMMAP_FUZZ_SEED=N seeds both the source's
layout and hypothesis, so a CI failure reproduces with the seed it printed:
    PVMMAP_FUZZ=ci PVMMAP_FUZZ_SEED=N python -m pytest -q -p no:cacheprovider tests/test_fuzz.py
"""
import contextlib
import errno
import faulthandler
import mmap
import os
import random
import subprocess
import sys
import tempfile

import pytest

hypothesis = pytest.importorskip("hypothesis", reason="the fuzz tests need "
                                 "hypothesis (pip install -e '.[test]')")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import pvmmap  # noqa: E402
from pvmmap._api import plan_clone  # noqa: E402
from child import PAGE, Source, libc  # noqa: E402

from _helpers import (UNDER_ASAN, kernel_thread, leftovers, own_state, thread_count,  # noqa: E402
                      user_space_end, vm_size_kb, zombie)

PROFILE = os.environ.get("PVMMAP_FUZZ", "dev")
SEED = os.environ.get("PVMMAP_FUZZ_SEED")
#: Examples per test, per profile: (clone cases, lists of flag cases (40-80
#: calls each), CLI cases).
COUNTS = {"dev": (150, 20, 5), "ci": (3000, 400, 40)}
if PROFILE not in COUNTS:
    raise ValueError(f"PVMMAP_FUZZ={PROFILE!r}: expected one of {', '.join(COUNTS)}")
CASES, FLAG_CASES, CLI_CASES = COUNTS[PROFILE]

BASE = settings(database=None, deadline=None, print_blob=True,
                report_multiple_bugs=False,
                derandomize=SEED is None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])


def seeded(test):
    return hypothesis.seed(int(SEED))(test) if SEED is not None else test


#: What each entry point may raise (docs/design.md, "Errors, per entry
#: point"): OSError with these errnos, and ValueError for a method, readahead
#: or freeze that does not apply.  The process_vm_mmap row is the contract's
#: list; clone adds ENOSYS (method="native" on a kernel without the call);
#: plan_clone raises the early ones and reports the rest in plan.error.
ERRNOS = {
    "process_vm_mmap": {errno.EINVAL, errno.ESRCH, errno.EPERM, errno.EFAULT,
                        errno.EOPNOTSUPP, errno.ENOMEM, errno.EEXIST},
    "clone": {errno.EINVAL, errno.ESRCH, errno.EPERM, errno.EFAULT,
              errno.EOPNOTSUPP, errno.ENOMEM, errno.EEXIST, errno.ENOSYS},
    "plan_clone": {errno.EINVAL, errno.ESRCH, errno.EPERM, errno.ENOSYS},
    "plan.error": {errno.EFAULT, errno.EOPNOTSUPP, errno.EPERM, errno.ESRCH},
}
#: The errors found from the arguments and the process, before any VMA is
#: looked at: the same from every entry point.
EARLY = {errno.EINVAL, errno.ESRCH, errno.EPERM, errno.ENOSYS}

FIXED, NOREPLACE = 0x1, 0x2
TASK_END = user_space_end()            # TASK_SIZE_MAX: where user space ends
# Our FIXED destinations: far below mmap's area, and clear of ASan's
# fixed regions on the sanitized build (its shadow gap, PROT_NONE, covers
# 0x8fff7000-0x2008fff7000; its allocator 0x600000000000-0x640000000000).
SCRATCH = 0x300000000000
SCRATCH_PAGES = 64                     # first half mapped PROT_NONE, second half free


# ---- the source and the pids ---------------------------------------------

def random_layout(rng, datadir):
    """A spec for child.Source: 5-8 regions of random kinds, sizes,
    protections and fills, laid out one after the other (so ranges can span
    VMAs of different kinds), then a region cut into 4 VMAs and one to be
    registered with userfaultfd."""
    spec = []
    for i in range(rng.randint(5, 8)):
        kind = rng.choice(["anon", "anon", "shared", "memfd", "file", "shm"])
        pages = rng.randint(1, 6)
        r = dict(name=f"r{i}", kind=kind, size=pages * PAGE, seed=rng.randint(1, 999),
                 prot=rng.choice(["rw", "rw", "r", "none", "w"]),
                 fill=rng.choice(["pattern", "none",
                                  sorted(rng.sample(range(pages), rng.randint(1, pages)))]))
        if kind == "file":
            r["path"] = os.path.join(datadir, f"r{i}")
            with open(r["path"], "wb") as f:
                f.write(rng.randbytes(pages * PAGE))
            r["shared"] = rng.random() < 0.5
        spec.append(r)
    spec.append(dict(name="cut", kind="anon", size=4 * PAGE, vmas=4))
    spec.append(dict(name="uffd", kind="anon", size=2 * PAGE))
    spec[1]["after"] = spec[0]["name"]         # the layout in one arena, in order
    return spec


def vmas_of(pid):
    """(start, end) of each VMA of pid, from /proc/PID/maps."""
    out = []
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            start, end = (int(x, 16) for x in line.split(None, 1)[0].split("-"))
            out.append((start, end))
    return out


def covered(vmas, start, end):
    """Whether [start, end) is mapped without a hole."""
    at = start
    for lo, hi in vmas:
        if hi <= at:
            continue
        if lo > at:
            return False
        at = hi
        if at >= end:
            return True
    return at >= end


def one_vma(vmas, start, end):
    return any(lo <= start and end <= hi for lo, hi in vmas)


class World:
    """The source, its layout, the pids of every kind, our scratch range."""

    def __init__(self, stack):
        seed = int(SEED) if SEED is not None else 0
        rng = random.Random(seed)
        datadir = stack.enter_context(tempfile.TemporaryDirectory(prefix="pvmmap-fuzz-"))
        self.spec = random_layout(rng, datadir)
        self.src = Source(self.spec)
        stack.callback(self.src.close)
        addr = self.src.addr
        # holes inside and between regions
        for r in rng.sample(self.spec[:-2], 2):
            self.src.unmap(addr[r["name"]] + rng.randrange(r["size"] // PAGE) * PAGE, PAGE)
        self.src.register_uffd(addr["uffd"], 2 * PAGE)
        with contextlib.suppress(OSError):      # no PKU here: that VMA stays plain
            self.src.pkey_mprotect(addr["r0"], PAGE)
        self.tid = self.src.start_thread()
        self.zombie = stack.enter_context(zombie())
        dead = subprocess.Popen([sys.executable, "-c", ""])
        dead.wait()
        with open("/proc/sys/kernel/pid_max") as f:
            pid_max = int(f.read())
        self.pids = {
            "source": self.src.pid, "thread": self.tid, "ours": os.getpid(),
            "pid 1": 1, "kernel thread": kernel_thread(), "zombie": self.zombie,
            "dead": dead.pid, "pid 0": 0, "negative": -1, "pid_max": pid_max,
            "INT_MAX": 2**31 - 1, "2^32+source": 2**32 + self.src.pid,
            "2^64": 2**64,
        }
        self.vmas = vmas_of(self.src.pid)
        lo = min(addr[r["name"]] for r in self.spec)
        self.points = sorted({p for v in self.vmas for p in v
                              if lo - 8 * PAGE <= p <= max(v[1] for v in self.vmas)})
        self.points = [p for p in self.points if p < TASK_END]
        # our own memory, for pid "ours"
        self.own = mmap.mmap(-1, 4 * PAGE)
        stack.callback(self.own.close)
        self.own.write(random.Random(seed + 1).randbytes(4 * PAGE))
        self.own_addr = own_addr = libc_address(self.own)
        self.points += [own_addr, own_addr + 4 * PAGE]
        self.layout = [v for v in self.vmas if lo <= v[0] < TASK_END
                       and v[1] <= max(addr[r["name"]] + r["size"] for r in self.spec)]
        self.layout.append((own_addr, own_addr + 4 * PAGE))
        assert scratch_pages() == {}, "the scratch range is taken"
        self.scratch = map_scratch()
        stack.callback(libc.munmap, SCRATCH, SCRATCH_PAGES * PAGE)


def libc_address(m):
    import ctypes
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


def map_scratch():
    """Map [SCRATCH, SCRATCH + half) PROT_NONE and keep the other half free,
    replacing what the previous case left (only our destinations are there)."""
    import ctypes
    half = SCRATCH_PAGES // 2 * PAGE
    got = libc.mmap(SCRATCH, half, 0, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
                    | 0x10 | 0x4000, -1, 0)       # MAP_FIXED, MAP_NORESERVE
    assert got == SCRATCH, "cannot map the scratch destination range"
    libc.munmap(ctypes.c_void_p(SCRATCH + half), ctypes.c_size_t(half))
    return SCRATCH


def scratch_pages():
    """{page index: perms} of what is mapped in the scratch range now."""
    out = {}
    end = SCRATCH + SCRATCH_PAGES * PAGE
    with open("/proc/self/maps") as f:
        for line in f:
            rng, perms = line.split(None, 2)[:2]
            lo, hi = (int(x, 16) for x in rng.split("-"))
            for a in range(max(lo, SCRATCH), min(hi, end), PAGE):
                out[(a - SCRATCH) // PAGE] = perms
    return out


SCRATCH_BEFORE = {i: "---p" for i in range(SCRATCH_PAGES // 2)}


@pytest.fixture(scope="module")
def world():
    # Every wait has a bound: a hang anywhere in this module (a lazy fault
    # never served, a frozen source) dumps the stacks and ends the run.
    faulthandler.dump_traceback_later(1800, exit=True)
    try:
        with contextlib.ExitStack() as stack:
            yield World(stack)
    finally:
        faulthandler.cancel_dump_traceback_later()


# ---- the inputs ------------------------------------------------------------

def addresses(w):
    odd = st.sampled_from([0, 1, PAGE - 1, PAGE, TASK_END - PAGE, TASK_END - 1,
                           TASK_END, TASK_END + PAGE, 2**63, 2**64 - PAGE,
                           2**64 - 1, 2**64, -1, -PAGE])
    near = st.builds(lambda p, d: p + d, st.sampled_from(w.points),
                     st.sampled_from([0, 0, 0, 1, PAGE - 1, PAGE, 2 * PAGE, -1, -PAGE])
                     | st.integers(-4 * PAGE, 4 * PAGE))
    return st.one_of(near, near, near, near, near, near, near, near, near, odd)


SMALL = st.integers(1, 3 * PAGE) | st.integers(1, 24 * PAGE) | st.sampled_from(
    [1, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE])
LENGTHS = st.one_of(
    SMALL, SMALL, SMALL, SMALL, SMALL, SMALL, SMALL,
    st.sampled_from([0, 2**47, 2**64 - 1, 2**64, -1, -PAGE]),
    st.integers(-2**65, 2**66))


def destinations():
    """(kind, value): a hint, or a FIXED/NOREPLACE address in the scratch
    range (mapped half or free half, unaligned too), or one outside every
    mapping we could clobber (past user space, not an unsigned long)."""
    inside = st.builds(lambda i, off: SCRATCH + i * PAGE + off,
                       st.integers(0, SCRATCH_PAGES - 1), st.sampled_from([0, 0, 1, PAGE - 1]))
    outside = st.sampled_from([TASK_END, 2**64 - PAGE, 2**64 - 1, 2**64, -PAGE, -1])
    hint = st.sampled_from([0, 1, PAGE, SCRATCH, TASK_END, 2**64 - 1, 2**64, -1])
    return st.one_of(
        st.just(("hint", 0)), st.just(("hint", 0)), st.tuples(st.just("hint"), hint),
        st.tuples(st.sampled_from(["fixed", "noreplace"]), inside | inside | outside))


@st.composite
def in_and_across(draw, w):
    """(addr, length) starting inside one of the source's VMAs of the
    layout (or our own buffer): ending in it, in the next one, or past it
    into a hole."""
    lo, hi = draw(st.sampled_from(w.layout))
    addr = draw(st.integers(lo, hi - 1))
    length = draw(st.integers(1, hi - addr) | st.integers(hi - addr, hi - addr + 12 * PAGE))
    return addr, length


def ranges(w):
    free = st.tuples(addresses(w), LENGTHS)
    return st.one_of(in_and_across(w), in_and_across(w), free)


def case(w):
    return st.fixed_dictionaries({
        "pid": st.sampled_from(["source"] * 12 + ["thread"] * 3 + ["ours"] * 2
                               + sorted(w.pids)),
        "range": ranges(w),
        "method": st.sampled_from(["auto", "auto", "copy", "copy", "lazy", "lazy", "native"]),
        "freeze": st.booleans(),
        "dest": destinations(),
    })


# ---- the oracle from the contract's order of checks ------------------------

def page_down(x):
    return x & ~(PAGE - 1)


def page_up(x):
    return (x + PAGE - 1) & ~(PAGE - 1)


def expected_early(w, kind, pid, addr, length, flags=0, method="auto", dest=0):
    """The errno of the checks made before any VMA is looked at, or None:
    EINVAL for the arguments (flags, a destination that is no unsigned
    long, length, page 0, pid <= 0, past user
    space), ESRCH for a pid no pid_t holds, then ENOSYS for method="native" without the call, then the
    process: ESRCH (no such process, a zombie), EINVAL (a kernel thread)."""
    if flags & ~(FIXED | NOREPLACE) or flags < 0 or not 0 <= dest < 2**64 or length <= 0 \
            or page_down(addr) <= 0 or pid <= 0 or page_up(addr + length) > TASK_END:
        return errno.EINVAL
    if pid > 2**31 - 1:             # no pid_t: checked with the arguments
        return errno.ESRCH
    if method == "native" and not pvmmap.features().native:
        return errno.ENOSYS
    if kind in ("zombie", "pid_max", "INT_MAX"):
        return errno.ESRCH
    if kind == "kernel thread":
        return errno.EINVAL
    if kind == "dead" and not os.path.exists(f"/proc/{pid}"):
        return errno.ESRCH
    return None


def outcome(call):
    """(value, None) or (None, the exception), for any exception."""
    try:
        return call(), None
    except Exception as e:      # everything is judged by the caller
        return None, e


def errno_of(exc, entry):
    """The errno of an error `entry` may raise; fails on anything else."""
    assert isinstance(exc, OSError), f"{entry}: not an OSError: {exc!r}"
    assert exc.errno in ERRNOS[entry], f"{entry}: undocumented errno: {exc!r}"
    assert type(exc) is type(OSError(exc.errno, "x")), (entry, exc)
    assert str(os.strerror(exc.errno)) in str(exc), (entry, exc)
    return exc.errno


def read_mem(pid, addr, n):
    """n bytes at addr of pid through /proc/PID/mem (protections do not
    matter), or the errno reading gave."""
    fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.pread(fd, n, addr)
    except OSError as e:
        return e.errno
    finally:
        os.close(fd)


CHECKED = 8 * PAGE      # bytes compared per success


def same_bytes(w, pid, addr, got_addr, length):
    """The clone's first bytes are the source's.  Of our own memory only
    w.own is compared: the rest (heap, arenas) changes under the test."""
    lo, hi = addr, addr + min(length, CHECKED)
    if pid == os.getpid():
        lo, hi = max(lo, w.own_addr), min(hi, w.own_addr + len(w.own))
        if lo >= hi:
            return
    want = read_mem(pid, lo, hi - lo)
    assert read_mem(os.getpid(), got_addr + (lo - addr), hi - lo) == want, \
        f"clone of pid {pid} {addr:#x}+{length:#x} differs from the source"


# ---- the properties --------------------------------------------------------

def state():
    return own_state(), thread_count()


def assert_nothing_left(before, note):
    assert leftovers(before[0]) == [], note
    assert thread_count() == before[1], f"threads leaked: {note}"


@pytest.fixture(scope="module")
def warmed(world):
    """One clone of each method first: the lazy server (one thread, its
    epoll fd and stack, for the life of the process) exists from then on,
    so fds, VMAs and thread counts compare."""
    a = world.src.addr["cut"]           # private anonymous, always there
    for method in ("auto", "copy", "lazy"):
        with pvmmap.clone(world.src.pid, a, PAGE, method=method) as m:
            m.populate()
    return world, vm_size_kb()


def run_clone(w, c):
    """clone() with the case's arguments; (mapping or None, exception)."""
    kind, dest = c["dest"]
    kw = dict(method=c["method"], freeze=c["freeze"])
    if kind != "hint":
        kw[kind] = True
    kw["dest"] = dest
    return outcome(lambda: pvmmap.clone(w.pids[c["pid"]], c["addr"], c["length"], **kw))


def fits_scratch(c):
    """A FIXED destination inside scratch takes the whole rounded range:
    keep it inside scratch (else it would replace memory of ours)."""
    kind, dest = c["dest"]
    if kind == "hint" or not SCRATCH <= dest < SCRATCH + SCRATCH_PAGES * PAGE:
        return True
    if c["length"] <= 0 or page_down(c["addr"]) <= 0:
        return True         # EINVAL before any destination
    total = page_up(c["addr"] + c["length"]) - page_down(c["addr"])
    return page_down(dest) + total <= SCRATCH + SCRATCH_PAGES * PAGE


@seeded
@settings(BASE, max_examples=CASES)
@given(data=st.data())
def test_every_entry_point_agrees(warmed, data):
    w, _ = warmed
    c = data.draw(case(w))
    c["addr"], c["length"] = c.pop("range")
    hypothesis.assume(fits_scratch(c))
    if c["pid"] == "pid 1":
        c["freeze"] = False         # never stop the machine's init
    pid, addr, length = w.pids[c["pid"]], c["addr"], c["length"]
    kind, dest = c["dest"]
    flags = {"hint": 0, "fixed": FIXED, "noreplace": NOREPLACE}[kind]
    note = f"case {c}"
    map_scratch()           # as it should be, whatever a failed case left
    before = state()
    placed = False

    m, e_clone = run_clone(w, c)
    if m is not None:
        placed |= flags != 0
        with m:
            assert len(m) == length and m.address % PAGE == addr % PAGE, note
            if flags:
                assert m.address - addr % PAGE == page_down(dest), note
            if c["method"] == "lazy":
                # /proc/self/mem is a kernel access: with a user-mode-only
                # userfaultfd, pages not yet fetched read as EIO (README).
                m.populate()
            same_bytes(w, pid, addr, m.address, length)
    base, e_pvm = outcome(lambda: pvmmap.process_vm_mmap(pid, addr, length, dest, flags))
    if base is not None:
        placed |= flags != 0
        try:
            assert base == page_down(base), note
            if flags:
                assert base == page_down(dest), note
            same_bytes(w, pid, addr, base + addr % PAGE, length)
        finally:
            pvmmap.munmap(base, length + addr % PAGE)
    plan, e_plan = outcome(lambda: plan_clone(pid, addr, length, method=c["method"],
                                                     freeze=c["freeze"]))

    # Nothing left behind, and a failed FIXED call changed nothing of ours.
    want = dict(SCRATCH_BEFORE)
    if placed:
        rng = range((page_down(dest) - SCRATCH) // PAGE,
                    (page_down(dest) - SCRATCH + page_up(addr + length) - page_down(addr))
                    // PAGE)
        for i in rng:
            want.pop(i, None)
    assert scratch_pages() == want, f"the destination was changed: {note}"
    map_scratch()
    assert_nothing_left(before, note)

    # Only documented errors; the same from every entry point.
    early = expected_early(w, c["pid"], pid, addr, length, dest=dest)
    lazy_freeze = c["method"] == "lazy" and c["freeze"]
    if isinstance(e_clone, ValueError):
        assert lazy_freeze, f"clone: ValueError: {e_clone} ({note})"
        assert isinstance(e_plan, ValueError), f"plan_clone disagrees: {e_plan!r} ({note})"
        return
    assert not lazy_freeze or e_clone is not None and errno_of(e_clone, "clone") in EARLY, \
        f"lazy with freeze=True: {e_clone!r} ({note})"
    ec = errno_of(e_clone, "clone") if e_clone else 0
    ep = errno_of(e_pvm, "process_vm_mmap") if e_pvm else 0
    hypothesis.event(f"clone: {errno.errorcode.get(ec, 'ok')}"
                     + (f" ({str(e_clone).split('(', 1)[1].split(',')[0]})"
                        if ec == errno.EINVAL else ""))
    hypothesis.event(f"process_vm_mmap: {errno.errorcode.get(ep, 'ok')}")
    if early is not None:
        assert ep == early, f"process_vm_mmap: {e_pvm!r}, expected {early} ({note})"
    early_clone = expected_early(w, c["pid"], pid, addr, length, method=c["method"],
                                 dest=dest)
    if early_clone is not None:
        assert ec == early_clone, f"clone: {e_clone!r}, expected {early_clone} ({note})"
    if c["freeze"] and c["pid"] == "ours" and early_clone is None:
        assert ec == errno.EINVAL, f"freeze on ourselves: {e_clone!r} ({note})"
    start, end = page_down(addr), page_up(addr + length)
    if early is None and c["pid"] in ("source", "thread"):
        if not covered(w.vmas, start, end):
            assert ep == errno.EFAULT, f"a hole: {e_pvm!r} ({note})"
            if c["method"] != "native":
                assert ec == errno.EFAULT, f"a hole: {e_clone!r} ({note})"
    # process_vm_mmap against clone with the same arguments
    if c["method"] == "auto" and not c["freeze"]:
        if ec in EARLY or ep in EARLY or one_vma(w.vmas, start, end) \
                or c["pid"] not in ("source", "thread"):
            if c["pid"] != "ours":          # our own maps move between the calls
                assert ep == ec, f"clone {e_clone!r}, process_vm_mmap {e_pvm!r} ({note})"
        else:
            assert ep in (ec, errno.EFAULT), \
                f"clone {e_clone!r}, process_vm_mmap {e_pvm!r} ({note})"
    # plan_clone's verdict is what clone did (plan_clone has no destination)
    if not 0 <= dest < 2**64 and ec == errno.EINVAL:
        return          # plan_clone has no destination to refuse
    if e_plan is not None:
        pe = errno_of(e_plan, "plan_clone")
        assert pe == ec, f"plan_clone raised {e_plan!r}, clone {e_clone!r} ({note})"
    elif ec not in (errno.EEXIST, errno.ENOMEM) and c["pid"] != "ours":
        if plan.error is None:
            assert ec == 0, f"plan says ok, clone raised {e_clone!r} ({note})"
        else:
            assert errno_of(plan.error, "plan.error") == ec, \
                f"plan says {plan.error!r}, clone {e_clone!r} ({note})"


FLAGS = st.builds(lambda bit, more, extra: (1 << bit) | (more if extra else 0),
                  st.integers(0, 63), st.integers(0, 2**64 - 1), st.booleans())


@seeded
@settings(BASE, max_examples=FLAG_CASES)
@given(flag_sets=st.lists(FLAGS, min_size=40, max_size=80), kind=st.sampled_from(
    ["source", "source", "thread", "ours", "zombie", "kernel thread", "pid 0"]))
def test_every_flag_bit(warmed, flag_sets, kind):
    """process_vm_mmap: any flag bit besides FIXED and FIXED_NOREPLACE is
    EINVAL, whatever the pid and the rest of the call, and leaves nothing
    behind (checked once per list of calls: each is one case)."""
    w, _ = warmed
    before = state()
    for flags in flag_sets:
        if not flags & ~(FIXED | NOREPLACE):
            continue
        with pytest.raises(OSError) as info:
            pvmmap.process_vm_mmap(w.pids[kind], w.src.addr["r0"], PAGE, SCRATCH, flags)
        assert info.value.errno == errno.EINVAL, info.value
        assert "flags" in str(info.value), info.value
    hypothesis.event(f"{len(flag_sets) // 10 * 10}+ calls")
    assert scratch_pages() == SCRATCH_BEFORE
    assert_nothing_left(before, f"flags {[hex(f) for f in flag_sets]}")


@pytest.mark.skipif(UNDER_ASAN, reason="on the sanitized build ASan's quarantine and "
                    "allocator grow VmSize with no leak (the plain run checks this)")
def test_address_space_stays_flat(warmed):
    """leftovers() cannot see a leaked read-write private clone (it leaves
    out rw-p anonymous VMAs, which the allocator makes), and hypothesis's
    own memory grows over thousands of examples (47 MiB over 3,000 here),
    so VmSize is watched over a plain loop instead: every VMA of the layout
    and a range past each, through every entry point and method, 10 times
    over, within 1 MiB (one page leaked per call would be 10+ MiB)."""
    w, _ = warmed
    pid = w.src.pid
    calls = [lambda a, n, m=m: pvmmap.clone(pid, a, n, method=m).close()
             for m in ("auto", "copy", "lazy")]
    calls += [lambda a, n: pvmmap.munmap(pvmmap.process_vm_mmap(pid, a, n), n),
              lambda a, n: plan_clone(pid, a, n)]

    def cycle():
        for lo, hi in w.layout[:-1]:                    # the source's VMAs
            for n in (hi - lo, hi - lo + 2 * PAGE):     # inside, and past the end
                for call in calls:
                    with contextlib.suppress(OSError):
                        call(lo, n)

    cycle()
    before = vm_size_kb()
    for _ in range(10):
        cycle()
    assert vm_size_kb() - before <= 1024
    assert scratch_pages() == SCRATCH_BEFORE


@seeded
@settings(BASE, max_examples=CLI_CASES)
@given(data=st.data())
def test_cli_clone_agrees(warmed, data):
    """`pvmmap clone PID ADDR LEN -o -` (a subprocess, so a sample): exit 0
    with the source's bytes exactly when clone() succeeds, else exit 1 with
    the same error's text."""
    w, _ = warmed
    kind = data.draw(st.sampled_from(["source", "source", "thread", "zombie",
                                      "kernel thread", "pid 0", "pid_max"]))
    addr = data.draw(addresses(w).filter(lambda a: a >= 0))
    length = data.draw(st.integers(1, 4 * PAGE) | st.sampled_from([2**47]))
    method = data.draw(st.sampled_from(["auto", "copy", "lazy"]))
    pid = w.pids[kind]
    m, err = outcome(lambda: pvmmap.clone(pid, addr, length, method=method))
    if m is not None:
        m.close()
    proc = subprocess.run([sys.executable, "-m", "pvmmap", "clone", str(pid), hex(addr),
                           str(length), "--method", method, "-o", "-"],
                          capture_output=True, timeout=60)
    note = f"pid {kind} {addr:#x}+{length:#x} {method}: {proc.stderr.decode()}"
    if err is None:
        assert proc.returncode == 0, note
        assert proc.stdout == read_mem(pid, addr, length), note
    else:
        errno_of(err, "clone")
        assert proc.returncode == 1, note
        assert os.strerror(err.errno) in proc.stderr.decode(), note
