"""pvmmap.dump() and pvmmap.criu.open(): our images against our reader,
Debian's crit, CRIU 4.1.1 restoring from them, CRIU's own dumps and the 4.2
fixture, and CRIU's page server over loopback and across two network
namespaces made here."""

import errno
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pvmmap
from pvmmap import criu
from pvmmap.criu import ImageError, images

from _helpers import leftovers, own_state, settled
from child import page_bytes, pattern
from test_criu_images import (CRIT, FIXTURE, PRIV, PRIV_END, PRIV_FILLED, RESTORE, RO,
                              RO_END, SHARED, SHARED_END, _criu_binary, _criu_dump,
                              needs_crit)

PAGE = 4096
MiB = 1 << 20
needs_4k = pytest.mark.skipif(pvmmap._native.PAGESIZE != PAGE, reason="4 KiB pages only")
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")

# private rw with a hole (pages 48-63 never touched, 0-47 filled), shared
# anonymous, memfd, read-only and PROT_NONE (filled, then mprotect)
SPEC = [
    {"name": "priv", "kind": "anon", "size": 64 * PAGE, "fill": list(range(48)), "seed": 3},
    {"name": "shared", "kind": "shared", "size": 8 * PAGE, "seed": 4},
    {"name": "mfd", "kind": "memfd", "size": 16 * PAGE, "seed": 5},
    {"name": "ro", "kind": "anon", "size": 8 * PAGE, "prot": "r", "seed": 6},
    {"name": "none", "kind": "anon", "size": 8 * PAGE, "prot": "none", "seed": 7},
]


def expected(name):
    r = {x["name"]: x for x in SPEC}[name]
    if name == "priv":
        return b"".join(page_bytes(3, i) for i in range(48)) + bytes(16 * PAGE)
    return pattern(r["size"], r["seed"])


def _vma_at(vmas, addr):
    (v,) = [v for v in vmas if v.start <= addr < v.end]
    return v


def _read_mapping(m, start, length):
    if not m.prot & pvmmap._native.PROT_READ:
        m.mprotect(pvmmap._native.PROT_READ)
    return m[start:start + length]


def _check_image(directory, s, lazy=False):
    """Every SPEC region of source s reads back from the images as expected
    (lazy: served by the userfaultfd server, each page fetched on touch)."""
    with criu.open(directory, lazy=lazy) as img:
        assert img.pid == s.pid
        for r in SPEC:
            a = s.addr[r["name"]]
            vma = _vma_at(img.vmas, a)
            m = img.mapping(vma)
            assert m.method == "image" and m.stats["copied_bytes"] == 0
            assert m.prot == vma.prot
            assert m.lazy == (lazy and m.stats["lazy_runs"] > 0)
            if m.lazy:
                assert m.stats["pages_done"] == 0 and m.stats["bytes_fetched"] == 0
            assert _read_mapping(m, a - vma.start, r["size"]) == expected(r["name"]), r["name"]
            if m.lazy:
                assert settled(m, lambda st: st["bytes_fetched"] > 0)["bytes_fetched"] > 0
                assert m.lost == 0


# -- the round trip --------------------------------------------------------------------


@needs_4k
def test_dump_and_open_round_trip(tmp_path, source):
    s = source(SPEC)
    lazy = pvmmap.features().uffd != "none"
    if lazy:
        _start_lazy_server()
    before = own_state()
    calls = []
    result = pvmmap.dump(s.pid, tmp_path, progress=lambda d, t: calls.append((d, t)))
    assert result.frozen_threads == 1 and result.page_server is None
    names = sorted(os.listdir(tmp_path))
    assert names == sorted(os.path.basename(p) for p in result.images)
    assert f"mm-{s.pid}.img" in names and f"pagemap-{s.pid}.img" in names
    assert not [n for n in names if n.endswith(".tmp")]
    # progress: from 0 to the total, never backwards
    assert calls[0] == (0, result.bytes) and calls[-1] == (result.bytes, result.bytes)
    assert all(a[0] <= b[0] for a, b in zip(calls, calls[1:]))
    assert result.bytes == result.pages * PAGE

    dump = images.read_dump(tmp_path)
    priv = _vma_at(dump.vmas, s.addr["priv"])
    runs = dump.pagemap.runs_in(s.addr["priv"], s.addr["priv"] + 64 * PAGE)
    assert runs[-1].end == s.addr["priv"] + 48 * PAGE          # the hole: no pages
    assert priv.status == images.VMA_AREA_REGULAR | images.VMA_ANON_PRIVATE
    for name in ("shared", "mfd"):
        v = _vma_at(dump.vmas, s.addr[name])
        assert v.status & images.VMA_AREA_MEMFD and dump.shmid_of(v) in dump.shmem
    assert _vma_at(dump.vmas, s.addr["ro"]).prot == 1
    assert _vma_at(dump.vmas, s.addr["none"]).prot == 0

    _check_image(tmp_path, s)
    if lazy:
        _check_image(tmp_path, s, lazy=True)
    with criu.open(tmp_path) as img:
        ms = img.mappings()
        assert len(ms) == len(img.vmas)
        kinds = {m.source_address: m.kind for m in ms}
        assert kinds[_vma_at(img.vmas, s.addr["shared"]).start] == "shared-anon"
        assert kinds[_vma_at(img.vmas, s.addr["mfd"]).start] == "memfd"
    assert all(m.closed for m in ms)
    assert leftovers(before) == []


@needs_4k
def test_dump_is_one_instant(tmp_path, source):
    """A thread writes a counter to the first and the last page of a 64 MiB
    region without pause; frozen, the dump sees last == first (or one
    behind: the two writes are not atomic together)."""
    s = source([{"name": "big", "kind": "anon", "size": 64 * MiB}])
    first, last = s.addr["big"], s.addr["big"] + 64 * MiB - 8
    s.spin(first, last)
    time.sleep(0.05)
    pvmmap.dump(s.pid, tmp_path)
    with criu.open(tmp_path) as img:
        m = img.mapping(_vma_at(img.vmas, first))
        a = int.from_bytes(m[first - m.source_address:][:8], "little")
        b = int.from_bytes(m[last - m.source_address:][:8], "little")
        assert a > 0 and a - b in (0, 1), (a, b)


@needs_4k
def test_large_dump(tmp_path, source):
    """Several units of the pages file (and progress calls between them):
    bytes still in order."""
    s = source([{"name": "big", "kind": "anon", "size": 96 * MiB, "seed": 9}])
    calls = []
    pvmmap.dump(s.pid, tmp_path, progress=lambda d, t: calls.append(d))
    assert len(calls) >= 4
    with criu.open(tmp_path) as img:
        v = _vma_at(img.vmas, s.addr["big"])
        m = img.mapping(v)
        off = s.addr["big"] - v.start
        assert m.stats["mapped_runs"] >= 1
        assert m[off:off + 96 * MiB] == pattern(96 * MiB, 9)


@needs_crit
def test_crit_decodes_our_dump(tmp_path, source):
    s = source(SPEC)
    pvmmap.dump(s.pid, tmp_path)
    for name in sorted(os.listdir(tmp_path)):
        if name.startswith("pages-"):
            continue
        out = subprocess.run([CRIT, "decode", "-i", str(tmp_path / name)], check=True,
                             capture_output=True, text=True).stdout
        decoded = json.loads(out)
        if name == f"pagemap-{s.pid}.img":
            ours = images.read_dump(tmp_path).pagemap.runs
            assert [(e["vaddr"], e["nr_pages"]) for e in decoded["entries"][1:]] == \
                [(r.vaddr, r.nr_pages) for r in ours]
    out = subprocess.run([CRIT, "x", str(tmp_path), "mems"], check=True,
                         capture_output=True, text=True).stdout.splitlines()
    assert out[0] == str(s.pid)
    listed = [tuple(int(x, 16) for x in line.split()[0].split("-")) for line in out[2:]]
    assert listed == [(v.start, v.end) for v in images.read_dump(tmp_path).vmas]


# -- errors -----------------------------------------------------------------------------


def test_dump_errors(tmp_path, source):
    with pytest.raises(ProcessLookupError):
        pvmmap.dump(2 ** 22 + 12345, tmp_path)
    with pytest.raises(OSError) as e:
        pvmmap.dump(0, tmp_path)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        pvmmap.dump(os.getpid(), tmp_path)
    assert e.value.errno == errno.EINVAL and "freeze" in str(e.value)
    s = source(SPEC[:1])
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as e:
        pvmmap.dump(s.pid, missing)
    assert str(missing) in str(e.value) and f"pid {s.pid}" in str(e.value)
    with pytest.raises(ValueError, match="HOST:PORT"):
        pvmmap.dump(s.pid, tmp_path, page_server="localhost")
    with pytest.raises(ImageError):
        criu.open(tmp_path, lazy=True)          # nothing there, lazy or not
    assert os.listdir(tmp_path) == []


@needs_root
def test_dump_failure_removes_what_it_wrote(tmp_path, source):
    """A full filesystem: ENOSPC naming the pid and the directory, and no
    image (or temporary file) left."""
    small = tmp_path / "small"
    small.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "pvmmap-test", str(small)],
                       capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        s = source([{"name": "big", "kind": "anon", "size": 4 * MiB}])
        before = own_state()
        with pytest.raises(OSError) as e:
            pvmmap.dump(s.pid, small)
        assert e.value.errno == errno.ENOSPC
        assert f"pid {s.pid}" in str(e.value) and str(small) in str(e.value)
        assert os.listdir(small) == []
        assert leftovers(before) == []
        assert s.read(s.addr["big"], 16)            # the source runs again
    finally:
        subprocess.run(["umount", str(small)], check=True)


@needs_4k
@pytest.mark.parametrize("damage,message", [
    ("truncate-pages", "too short"),
    ("magic", "magic"),
    ("truncate-mm", "truncated"),
    ("overlap", "overlaps"),
    ("outside", "outside every VMA"),
])
def test_open_bad_images(tmp_path, source, damage, message):
    s = source(SPEC)
    pvmmap.dump(s.pid, tmp_path)
    dump = images.read_dump(tmp_path)
    pm = Path(dump.pagemap.path)
    if damage == "truncate-pages":
        os.truncate(dump.pagemap.pages_path, os.path.getsize(dump.pagemap.pages_path) - PAGE)
    elif damage == "magic":
        data = bytearray(pm.read_bytes())
        data[5] ^= 0x10
        pm.write_bytes(data)
    elif damage == "truncate-mm":
        mm = tmp_path / f"mm-{s.pid}.img"
        mm.write_bytes(mm.read_bytes()[:-3])
    else:
        runs = dump.pagemap.runs
        if damage == "overlap":
            entries = [(r.vaddr, r.nr_pages) for r in runs]
            entries[1] = (entries[0][0], entries[1][1])
        else:
            gap = next(a.end for a, b in zip(dump.vmas, dump.vmas[1:]) if a.end < b.start)
            entries = sorted([(r.vaddr, r.nr_pages) for r in runs] + [(gap, 1)])
        head = {"pages_id": dump.pagemap.pages_id}
        pm.write_bytes(images.encode_image("pagemap", [head] + [
            {"vaddr": v, "compat_nr_pages": n, "flags": images.PE_PRESENT} for v, n in entries]))
        os.truncate(dump.pagemap.pages_path, sum(n for _, n in entries) * PAGE)
    with pytest.raises(ImageError, match=message):
        criu.open(tmp_path)


def test_open_pages_file_shrunk_after_open(tmp_path, source):
    """Truncated between open() and mapping(): ImageError, not SIGBUS later."""
    s = source(SPEC[:1])
    pvmmap.dump(s.pid, tmp_path)
    with criu.open(tmp_path) as img:
        path = img.dump.pagemap.pages_path
        os.truncate(path, 0)
        with pytest.raises(ImageError, match="needs bytes"):
            img.mapping(_vma_at(img.vmas, s.addr["priv"]))


# -- CRIU's own images -----------------------------------------------------------------


@needs_4k
def test_open_the_criu_42_fixture():
    with criu.open(FIXTURE) as img:
        priv = img.mapping(_vma_at(img.vmas, PRIV))
        assert priv.length == PRIV_END - PRIV
        assert priv[:PRIV_FILLED] == bytes((i * 7 + 1) & 0xFF for i in range(PRIV_FILLED))
        assert priv[PRIV_FILLED:] == bytes(PRIV_END - PRIV - PRIV_FILLED)     # the hole
        assert priv.stats["mapped_runs"] == 1      # CRIU's four entries, one mmap
        ro = img.mapping(_vma_at(img.vmas, RO))
        assert ro.prot == 1 and ro.tobytes() == b"\x11" * (RO_END - RO)
        shared = img.mapping(_vma_at(img.vmas, SHARED))
        assert shared.kind == "shared-anon"
        assert shared.tobytes() == b"\x5a" * (SHARED_END - SHARED)


def _need_uffd():
    if pvmmap.features().uffd == "none":
        pytest.skip("userfaultfd not available: " + pvmmap.features().uffd_reason)


def _start_lazy_server():
    """The lazy server's thread, epoll set and staging buffers live as long
    as the process: start them before a leftovers() baseline."""
    with criu.open(FIXTURE, lazy=True) as img:
        img.mapping(_vma_at(img.vmas, PRIV)).close()


@needs_4k
def test_open_the_criu_42_fixture_lazily():
    """lazy=True: the same bytes, each run served by the userfaultfd server
    from pages-N.img (a file source), nothing fetched before the touch;
    populate() fetches the rest; close leaves nothing behind."""
    _need_uffd()
    _start_lazy_server()
    before = own_state()
    with criu.open(FIXTURE, lazy=True) as img:
        priv = img.mapping(_vma_at(img.vmas, PRIV))
        assert priv.lazy and priv.stats["lazy_runs"] == 1
        assert priv.stats["pages_done"] == 0
        assert priv[:PAGE] == bytes((i * 7 + 1) & 0xFF for i in range(PAGE))
        # (the counters may lag a moment behind the woken read: settled())
        assert 0 < settled(priv, lambda st: st["bytes_fetched"] > 0)["bytes_fetched"] <= PRIV_FILLED
        priv.populate()
        assert priv.stats["bytes_fetched"] == PRIV_FILLED and priv.lost == 0
        assert priv[:PRIV_FILLED] == bytes((i * 7 + 1) & 0xFF for i in range(PRIV_FILLED))
        assert priv[PRIV_FILLED:] == bytes(PRIV_END - PRIV - PRIV_FILLED)
        ro = img.mapping(_vma_at(img.vmas, RO), lazy=True)
        assert ro.prot == 1 and ro.tobytes() == b"\x11" * (RO_END - RO)
        eager = img.mapping(_vma_at(img.vmas, RO), lazy=False)
        assert not eager.lazy and eager.tobytes() == ro.tobytes()
    assert priv.closed and ro.closed
    assert leftovers(before) == []


@needs_4k
def test_lazy_image_with_a_short_pages_file_poisons(tmp_path):
    """A pages file cut short after the open: the lazy Mapping's missing
    pages are lost (populate() raises, SIGBUS on touch), never zeros; the
    pages before the cut read as they should."""
    _need_uffd()
    local = tmp_path / "img"
    shutil.copytree(FIXTURE, local)
    with criu.open(local, lazy=True) as img:
        priv = img.mapping(_vma_at(img.vmas, PRIV))
        run = img.dump.pages_of(_vma_at(img.vmas, PRIV))[0]
        assert run.path.startswith(str(local))
        os.truncate(run.path, run.offset + PAGE)    # only the first page is left
        with pytest.raises(OSError):
            priv.populate()
        assert priv.lost == PRIV_FILLED // PAGE - 1
        assert priv[:PAGE] == bytes((i * 7 + 1) & 0xFF for i in range(PAGE))
    # A lost page raises SIGBUS on touch: in another interpreter, not here
    # (a lazy Mapping is not inherited by fork).
    shutil.rmtree(local)
    shutil.copytree(FIXTURE, local)
    code = (f"import os\n"
            f"from pvmmap import criu\n"
            f"img = criu.open({str(local)!r}, lazy=True)\n"
            f"m = img.mapping([v for v in img.vmas if v.start <= {PRIV} < v.end][0])\n"
            f"os.truncate({run.path!r}, {run.offset + PAGE})\n"
            f"assert m[:1] == bytes([1])\n"
            f"print('touching', flush=True)\n"
            f"m[{PAGE}]\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.stdout == "touching\n" and r.returncode == -signal.SIGBUS, r.stderr


def _session_leader(tmp_path, spec):
    """tests/child.py's layout in a process CRIU can dump: a session leader
    with stdin/stdout/stderr on /dev/null that takes no commands (so no pipe
    to us) and waits in pause().  Returns (Popen, {name: address})."""
    ready, tmp = tmp_path / "ready", tmp_path / "ready.tmp"
    code = (f"import io, os, signal, sys\n"
            f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            f"import child\n"
            f"sys.argv = ['child', {json.dumps(spec)!r}]\n"
            f"sys.stdin = io.StringIO()\n"
            f"with open({str(tmp)!r}, 'w') as sys.stdout:\n"
            f"    child.main()\n"
            f"os.rename({str(tmp)!r}, {str(ready)!r})\n"
            f"while True:\n"
            f"    signal.pause()\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         close_fds=True, start_new_session=True, cwd=tmp_path)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if p.poll() is not None or time.monotonic() > deadline:
            p.kill()
            p.wait()
            raise AssertionError("the session-leader child did not start")
        time.sleep(0.02)
    return p, json.loads(ready.read_text())


@pytest.fixture
def leader(tmp_path):
    made = []

    def make(spec=SPEC):
        p, addrs = _session_leader(tmp_path, spec)
        made.append(p)
        return p, addrs

    yield make
    for p in made:
        p.kill()
        p.wait()


class _Src:
    """What _check_image needs of a source."""

    def __init__(self, pid, addr):
        self.pid, self.addr = pid, addr


def _source_bytes(pid, addrs):
    out = {}
    with open(f"/proc/{pid}/mem", "rb") as mem:
        for r in SPEC:
            mem.seek(addrs[r["name"]])
            out[r["name"]] = mem.read(r["size"])
    return out


@needs_4k
def test_open_a_criu_411_dump(tmp_path, leader):
    criu_bin = _criu_binary()
    p, addrs = leader()
    _criu_dump(criu_bin, p.pid, tmp_path / "criu")
    assert _source_bytes(p.pid, addrs) == {r["name"]: expected(r["name"]) for r in SPEC}
    _check_image(tmp_path / "criu", _Src(p.pid, addrs))


# -- CRIU restores from our memory --------------------------------------------------------


def _translate_file_ids(ours, theirs):
    """Our files.img ids -> CRIU's for the same objects: a REG file by its
    path, a memfd by its shmem object (memfd.img shmid)."""
    def keys(dump):
        out = {}
        for fid, f in dump.files.items():
            if "reg" in f:
                out[fid] = ("reg", f["reg"]["name"])
            elif "memfd" in f:
                out[fid] = ("memfd", dump.memfd_inodes[f["memfd"]["inode_id"]]["shmid"])
        return out
    back = {}
    for fid, k in sorted(keys(theirs).items()):
        back.setdefault(k, fid)         # a memfd also open as an fd has two ids
    return {fid: back[k] for fid, k in keys(ours).items() if k in back}


@needs_4k
@needs_root
def test_criu_411_restores_from_our_memory(tmp_path, leader):
    """criu dump --leave-running, then pvmmap.dump of the same (idle,
    frozen) process; CRIU's pagemaps, pages and mm replaced by ours (the
    mm's file ids translated to CRIU's files.img); criu restore in a fresh
    pid namespace; the restored memory equals the source's."""
    criu_bin = _criu_binary()
    p, addrs = leader()
    cdir, odir = tmp_path / "criu", tmp_path / "ours"
    _criu_dump(criu_bin, p.pid, cdir)
    odir.mkdir()
    pvmmap.dump(p.pid, odir)
    source = _source_bytes(p.pid, addrs)
    assert source == {r["name"]: expected(r["name"]) for r in SPEC}
    p.kill()
    p.wait()

    theirs, ours = images.read_dump(cdir), images.read_dump(odir)
    # our VMA list is CRIU's, but for the file ids
    ids = _translate_file_ids(ours, theirs)
    mine = [v.__class__(**dict(v.as_entry(), shmid=ids.get(v.shmid, v.shmid)
                               if v.status & (images.VMA_FILE_PRIVATE
                                              | images.VMA_FILE_SHARED) else v.shmid))
            for v in ours.vmas]
    assert [v.as_entry() for v in mine] == [v.as_entry() for v in theirs.vmas]
    mm = ours.mm
    mm.vmas = mine
    mm.exe_file_id = ids[mm.exe_file_id]
    assert mm.as_entry() == theirs.mm.as_entry()          # all of mm-PID.img
    assert ours.pstree == theirs.pstree

    replaced = []
    for name in os.listdir(cdir):
        if name.startswith(("pagemap-", "pages-")):
            os.unlink(cdir / name)
    for name in os.listdir(odir):
        if name.startswith(("pagemap-", "pages-")):
            shutil.copy(odir / name, cdir / name)
            replaced.append(name)
    (cdir / f"mm-{p.pid}.img").write_bytes(images.encode_mm(mm))
    assert f"pagemap-{p.pid}.img" in replaced and any("shmem" in n for n in replaced)

    specs = [f"{addrs[r['name']]:x}:{r['size']:x}" for r in SPEC]
    r = subprocess.run(["unshare", "-p", "-m", "-f", "--mount-proc", sys.executable, "-c",
                        RESTORE,
                        criu_bin, str(cdir), str(p.pid), *specs],
                       capture_output=True, timeout=120)
    if r.returncode and b"unshare" in r.stderr[:200]:
        pytest.skip(f"unshare -p failed: {r.stderr.decode(errors='replace')[:200]}")
    log = (cdir / "restore.log").read_text(errors="replace") if (cdir / "restore.log").exists() \
        else ""
    assert r.returncode == 0, (r.stderr.decode(errors="replace")[-800:],
                               [x for x in log.splitlines() if "Error" in x][-5:])
    restored, at = {}, 0
    for spec in SPEC:
        restored[spec["name"]] = r.stdout[at:at + spec["size"]]
        at += spec["size"]
    for name in source:
        assert restored[name] == source[name], name


# -- CRIU's page server ----------------------------------------------------------------------


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _page_server(criu_bin, directory, port, address=None, netns=None):
    """Start `criu page-server`, return (Popen, its log) once it listens
    (--status-fd: it writes a byte when ready)."""
    directory.mkdir()
    rfd, wfd = os.pipe()
    cmd = [criu_bin, "page-server", "-D", str(directory), "--port", str(port),
           "--status-fd", str(wfd), "-o", "ps.log", "-v4"]
    if address:
        cmd += ["--address", address]
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    proc = subprocess.Popen(cmd, pass_fds=(wfd,), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    os.close(wfd)
    try:
        ready = os.read(rfd, 1)
    finally:
        os.close(rfd)
    if not ready:
        proc.wait()
        pytest.fail(f"criu page-server did not start: {proc.stderr.read()[-500:]!r}")
    return proc


def _merge_and_check(local, served, pid, addrs, source):
    """The page server's pagemaps/pages next to our other images: the same
    bytes as the source, and crit decodes what the page server wrote."""
    names = sorted(os.listdir(served))
    assert f"pagemap-{pid}.img" in names and any(n.startswith("pagemap-shmem-") for n in names)
    assert not [n for n in os.listdir(local) if n.startswith(("pagemap-", "pages-"))]
    for name in names:
        if name.startswith(("pagemap-", "pages-")):
            shutil.copy(served / name, local / name)
    if os.access(CRIT, os.X_OK):
        for name in names:
            if name.startswith("pagemap-"):
                subprocess.run([CRIT, "decode", "-i", str(served / name)], check=True,
                               capture_output=True)
    with criu.open(local) as img:
        for r in SPEC:
            v = _vma_at(img.vmas, addrs[r["name"]])
            m = img.mapping(v)
            off = addrs[r["name"]] - v.start
            assert _read_mapping(m, off, r["size"]) == source[r["name"]], r["name"]


@needs_4k
@needs_root
def test_page_server_loopback(tmp_path, source):
    criu_bin = _criu_binary()
    s = source(SPEC)
    port = _free_port()
    ps = _page_server(criu_bin, tmp_path / "served", port)
    try:
        local = tmp_path / "local"
        local.mkdir()
        r = pvmmap.dump(s.pid, local, page_server=f"127.0.0.1:{port}")
        assert ps.wait(timeout=60) == 0, ps.stderr.read()[-500:]
    finally:
        if ps.poll() is None:
            ps.kill()
            ps.wait()
        ps.stderr.close()
    assert r.page_server == f"127.0.0.1:{port}" and r.bytes > 0
    _merge_and_check(local, tmp_path / "served", s.pid, s.addr,
                     {x["name"]: expected(x["name"]) for x in SPEC})


def _ip(*args, check=True):
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@needs_4k
@needs_root
def test_page_server_across_network_namespaces(tmp_path, source):
    """Two namespaces joined by a veth pair (10.213.N.1 and .2, only inside
    them); the page server runs in the second, the dump in the first."""
    criu_bin = _criu_binary()
    if shutil.which("ip") is None:
        pytest.skip("no `ip` command (iproute2)")
    tag = f"{os.getpid() % 10000}"
    ns_a, ns_b = f"pvmmap-dump-a{tag}", f"pvmmap-dump-b{tag}"
    veth_a, veth_b = f"pvda{tag}", f"pvdb{tag}"
    subnet = f"10.213.{os.getpid() % 250}"
    made = []
    ps = None
    try:
        for ns in (ns_a, ns_b):
            r = _ip("netns", "add", ns, check=False)
            if r.returncode:
                pytest.skip(f"ip netns add: {r.stderr.strip()}")
            made.append(ns)
        r = _ip("link", "add", veth_a, "netns", ns_a, "type", "veth", "peer", "name", veth_b,
                "netns", ns_b, check=False)
        if r.returncode:
            pytest.skip(f"cannot make a veth pair: {r.stderr.strip()}")
        for ns, dev, host in ((ns_a, veth_a, 1), (ns_b, veth_b, 2)):
            _ip("-n", ns, "addr", "add", f"{subnet}.{host}/24", "dev", dev)
            _ip("-n", ns, "link", "set", dev, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        s = source(SPEC)
        port = _free_port()
        ps = _page_server(criu_bin, tmp_path / "served", port, f"{subnet}.2", ns_b)
        local = tmp_path / "local"
        local.mkdir()
        code = ("import sys, pvmmap\n"
                "r = pvmmap.dump(int(sys.argv[1]), sys.argv[2], page_server=sys.argv[3])\n"
                "print(r.bytes)\n")
        r = subprocess.run(["ip", "netns", "exec", ns_a, sys.executable, "-c", code,
                            str(s.pid), str(local), f"{subnet}.2:{port}"],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr[-800:]
        assert int(r.stdout) > 0
        assert ps.wait(timeout=60) == 0, ps.stderr.read()[-500:]
        _merge_and_check(local, tmp_path / "served", s.pid, s.addr,
                         {x["name"]: expected(x["name"]) for x in SPEC})
    finally:
        if ps is not None:
            if ps.poll() is None:
                ps.kill()
                ps.wait()
            ps.stderr.close()
        for ns in made:
            _ip("netns", "del", ns, check=False)
