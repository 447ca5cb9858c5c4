"""PVMMAP_BACKEND and PVMMAP_SYSCALL_NR set to nonsense, each in a fresh
interpreter (both are read once, at import).

The rule: `import pvmmap` always works (so `pvmmap info` and the image
reader stay usable); every call that picks a backend raises one
pvmmap.ConfigError (a ValueError) naming the variable, its value and the
accepted values; the command line prints that one line and exits 2.
"""

import os
import subprocess
import sys

import pytest

PAGE = 4096

NONSENSE = [
    ("PVMMAP_BACKEND", "foo", "expected one of auto, native, emulated"),
    ("PVMMAP_BACKEND", " native", "expected one of auto, native, emulated"),
    ("PVMMAP_SYSCALL_NR", "abc", "expected an integer from 1 to 4095"),
    ("PVMMAP_SYSCALL_NR", "-1", "expected an integer from 1 to 4095"),
    ("PVMMAP_SYSCALL_NR", "99999999999", "expected an integer from 1 to 4095"),
    ("PVMMAP_SYSCALL_NR", "0", "expected an integer from 1 to 4095"),
]

# Every entry point that picks a backend; each prints its exception type
# and message, or "no error".
CALLS = r"""
import mmap, ctypes, os, sys
import pvmmap
buf = mmap.mmap(-1, 4096)
buf[:4] = b"abcd"
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
me = os.getpid()
for name, call in [
        ("backend", lambda: pvmmap.backend),
        ("features", lambda: pvmmap.features()),
        ("clone", lambda: pvmmap.clone(me, addr, 4096)),
        ("clone-copy", lambda: pvmmap.clone(me, addr, 4096, method="copy")),
        ("clone-native", lambda: pvmmap.clone(me, addr, 4096, method="native")),
        ("process_vm_mmap", lambda: pvmmap.process_vm_mmap(me, addr, 4096)),
        ("sys_process_vm_mmap", lambda: pvmmap.sys_process_vm_mmap(me, addr, 4096, 0, 0))]:
    try:
        got = call()
        if hasattr(got, "close"):
            got.close()
        print(name, "no error")
    except Exception as e:
        print(name, type(e).__name__, isinstance(e, ValueError), str(e).splitlines()[0])
"""


def _run(argv, var, value):
    env = {k: v for k, v in os.environ.items()
           if k not in ("PVMMAP_BACKEND", "PVMMAP_SYSCALL_NR")}
    env[var] = value
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.parametrize("var,value,accepted", NONSENSE)
def test_import_works_and_every_call_names_the_variable(var, value, accepted):
    out = _run([sys.executable, "-c", CALLS], var, value)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 7, lines
    for line in lines:
        name, rest = line.split(" ", 1)
        assert rest.startswith("ConfigError True "), line
        assert f"{var}={value!r}" in rest and accepted in rest, line


@pytest.mark.parametrize("var,value,accepted", NONSENSE)
@pytest.mark.parametrize("command", ["info", "clone"])
def test_cli_prints_one_line_and_exits_2(source, command, var, value, accepted):
    s = source([{"name": "a", "kind": "anon", "size": PAGE}])
    args = ["info"] if command == "info" else ["clone", str(s.pid), hex(s.addr["a"]),
                                               str(PAGE)]
    out = _run([sys.executable, "-m", "pvmmap", *args], var, value)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert out.stdout == ""
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert lines[0].startswith(f"pvmmap {command}: {var}={value!r}"), lines
    assert accepted in lines[0]


def test_image_reader_works_with_a_bad_backend_value():
    """Reading images picks no backend: a bad PVMMAP_BACKEND does not stop it."""
    from test_criu_images import FIXTURE
    code = ("import pvmmap.criu as c; img = c.open(%r); print(len(img.mappings())); "
            "img.close()" % str(FIXTURE))
    out = _run([sys.executable, "-c", code], "PVMMAP_BACKEND", "foo")
    assert out.returncode == 0, out.stderr
    assert int(out.stdout) == 14


def test_forced_native_without_the_call(source):
    """PVMMAP_BACKEND=native on a kernel without the call: `pvmmap info`
    works and says why; `pvmmap clone` is one ENOSYS line, exit 1 (an OS
    error, not a configuration one)."""
    import pvmmap
    if pvmmap.features().native:
        pytest.skip("this kernel has process_vm_mmap(): native is usable")
    s = source([{"name": "a", "kind": "anon", "size": PAGE}])
    out = _run([sys.executable, "-m", "pvmmap", "info"], "PVMMAP_BACKEND", "native")
    assert out.returncode == 0, out.stderr
    assert "native" in out.stdout and "process_vm_mmap" in out.stdout
    out = _run([sys.executable, "-m", "pvmmap", "clone", str(s.pid), hex(s.addr["a"]),
                str(PAGE)], "PVMMAP_BACKEND", "native")
    assert out.returncode == 1 and out.stdout == "", out
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and "Function not implemented" in lines[0], out.stderr
    assert "PVMMAP_BACKEND" in lines[0] or "process_vm_mmap" in lines[0], lines


@pytest.mark.parametrize("value", ["451", "0x1c3"])
def test_well_formed_syscall_nr_is_accepted(value):
    """A number in range (decimal or hex) is taken; without the call in
    /proc/kallsyms it does not enable native (test_native checks that)."""
    out = _run([sys.executable, "-c", "import pvmmap; f = pvmmap.features(); "
                "print(f.backend, f.syscall_nr if f.native else 'none')"],
               "PVMMAP_SYSCALL_NR", value)
    assert out.returncode == 0, out.stderr
    backend, nr = out.stdout.split()
    assert backend in ("native", "emulated")
    assert nr == "none" or int(nr) == int(value, 0)
