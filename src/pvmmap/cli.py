"""The pvmmap command: demo, maps, features, bench."""

import argparse
import mmap
import os
import sys
import tempfile
import time

import pvmmap
from pvmmap._sample import PAGE, Source, page_bytes

MiB = 1 << 20


def _demo_spec(tmpdir):
    path = os.path.join(tmpdir, "data.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(4 * MiB))
    return [
        dict(name="heap (private anon)", kind="anon", size=64 * MiB, seed=1),
        dict(name="sparse 4 GiB, 64 pages", kind="anon", size=4 << 30, seed=2,
             fill=list(range(0, 1 << 20, 1 << 14)), noreserve=True),
        dict(name="shared anon", kind="shared", size=16 * MiB, seed=3),
        dict(name="memfd", kind="memfd", size=16 * MiB, seed=4),
        dict(name="POSIX shm", kind="shm", size=4 * MiB, seed=5),
        dict(name="private file, 2 dirty pages", kind="file", size=4 * MiB,
             seed=6, fill=[0, 7], path=path),
        dict(name="read-only anon", kind="anon", size=4 * MiB, seed=7, prot="r"),
        dict(name="PROT_NONE anon", kind="anon", size=1 * MiB, seed=8, prot="none"),
    ], path


def _verify(src, r, m):
    """Check the clone's bytes (and sharing) against the source."""
    addr = src.addr[r["name"]]
    fill = r.get("fill", "pattern")
    if r.get("prot") == "none":
        m.mprotect(mmap.PROT_READ)
        ok = m[:PAGE] == page_bytes(r["seed"], 0)
        return "bytes ok (read after mprotect)" if ok else "BYTES DIFFER"
    if fill == "pattern":
        ok = m.tobytes() == src.expected(r["name"])
    else:
        ok = all(m[i * PAGE:(i + 1) * PAGE] == page_bytes(r["seed"], i)
                 for i in fill[:64])
    if not ok:
        return "BYTES DIFFER"
    if m.method == "share":
        m[0:4] = b"PVMM"
        seen = src.read(addr, 4) == b"PVMM"
        src.write(addr + 8, b"back")
        back = m[8:12] == b"back"
        return "bytes ok, shared both ways" if seen and back else "NOT SHARED"
    if m.method in ("copy", "file") and "w" in r.get("prot", "rw"):
        src.write(addr, b"late")
        snap = m[0:4] != b"late"
        return "bytes ok, snapshot" if snap else "NOT A SNAPSHOT"
    return "bytes ok"


def demo(args):
    """Spawn a sample process with every kind of memory, clone each region,
    verify it, print a table."""
    f = pvmmap.features()
    print(f"pvmmap {pvmmap.__version__}: backend {f.backend} ({f.native_reason})")
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        spec, _ = _demo_spec(tmp)
        src = Source(spec)
        try:
            print(f"source pid {src.pid}\n")
            print(f"{'region':30} {'kind':13} {'method':7} {'size':>10} "
                  f"{'time':>10}  check")
            for r in spec:
                t0 = time.perf_counter()
                m = pvmmap.clone(src.pid, src.addr[r["name"]], r["size"],
                                 allow_copy=True)
                dt = time.perf_counter() - t0
                with m:
                    check = _verify(src, r, m)
                failures += "DIFFER" in check or "NOT" in check
                print(f"{r['name']:30} {m.kind:13} {m.method:7} "
                      f"{_size(r['size']):>10} {dt * 1e3:8.2f} ms  {check}")
        finally:
            src.close()
    print("\nall regions verified" if not failures else f"\n{failures} FAILED")
    return 1 if failures else 0


def _size(n):
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if n == int(n) else f"{n:.1f} {unit}"
        n /= 1024


def show_maps(args):
    import psutil
    regions = pvmmap.maps(args.pid)
    try:
        p = psutil.Process(args.pid)
        print(f"pid {args.pid} ({p.name()}, user {p.username()}, "
              f"rss {_size(p.memory_info().rss)}): {len(regions)} regions")
    except psutil.Error:
        pass
    for r in regions:
        flags = " ".join(sorted(r.flags or ()))
        print(f"{r.start:012x}-{r.end:012x} {r.perms} {r.kind:13} "
              f"{_size(r.size):>9}  {r.path}  [{flags}]")
    return 0


def show_features(args):
    f = pvmmap.features()
    for name in ("backend", "native", "syscall_nr", "uffd", "map_files",
                 "pagemap_scan"):
        value = getattr(f, name)
        reason = getattr(f, name + "_reason", "")
        print(f"{name:13} {value!s:16} {reason}")
    return 0


def bench(args, rest):
    from pvmmap import _bench
    return _bench.main(rest)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="pvmmap", description="Clone another process's memory into yours.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("demo", help="clone every kind of memory of a sample process")
    p = sub.add_parser("maps", help="the regions of a process and their kinds")
    p.add_argument("pid", type=int)
    sub.add_parser("features", help="what this kernel and these privileges allow")
    sub.add_parser("bench", help="benchmark against the baselines (see --help)",
                   add_help=False)
    args, rest = parser.parse_known_args(argv)
    if args.cmd == "bench":
        return bench(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return {"demo": demo, "maps": show_maps, "features": show_features}[args.cmd](args)
    except OSError as e:
        print(f"pvmmap: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
