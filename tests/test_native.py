"""The native path on a kernel without process_vm_mmap: it is never called
blindly, forcing it fails loudly, and the raw wrapper's argument passing and
errno handling are checked through a real syscall with five arguments.
(Inside the VM, with the port booted, the kernel-marked tests run natively.)"""
import errno
import os
import subprocess
import sys

import pytest

import pvmmap
from pvmmap import _native

SYS_KCMP = 312            # x86_64
SYS_PIDFD_OPEN = 434      # the 2019 series' number for process_vm_mmap
KCMP_FILE = 0
NO_SUCH_PID = 0x3FFFFFFF
x86_64 = os.uname().machine == "x86_64"
without_native = pytest.mark.skipif(pvmmap.features().native,
                                    reason="this kernel has process_vm_mmap")


@pytest.mark.skipif(not x86_64, reason="syscall numbers are x86_64's")
def test_raw_wrapper_passes_all_five_arguments():
    # kcmp(pid1, pid2, type, idx1, idx2) takes the wrapper's five arguments
    # (pid, src, length, dst, flags) in order and answers from all of them.
    r, w = os.pipe()
    dup = os.dup(r)
    pid = os.getpid()
    try:
        same = _native.sys_process_vm_mmap(SYS_KCMP, pid, pid, KCMP_FILE, r, dup)
        other = _native.sys_process_vm_mmap(SYS_KCMP, pid, pid, KCMP_FILE, r, w)
    finally:
        for fd in (r, w, dup):
            os.close(fd)
    assert same == 0                    # r and its dup: the same open file
    assert other in (1, 2)              # different files: an ordering


@pytest.mark.skipif(not x86_64, reason="syscall numbers are x86_64's")
def test_raw_wrapper_raises_the_kernels_errno():
    with pytest.raises(ProcessLookupError) as info:
        _native.sys_process_vm_mmap(SYS_KCMP, NO_SUCH_PID, os.getpid(), KCMP_FILE, 0, 0)
    assert info.value.errno == errno.ESRCH
    assert f"pid {NO_SUCH_PID}" in str(info.value)
    with pytest.raises(OSError) as info:
        _native.sys_process_vm_mmap(SYS_KCMP, os.getpid(), os.getpid(), KCMP_FILE,
                                    10**6, 10**6)
    assert info.value.errno == errno.EBADF
    with pytest.raises(OSError) as info:            # a number nobody has
        _native.sys_process_vm_mmap(1000, 1, 0x1000, 4096, 0, 0)
    assert info.value.errno == errno.ENOSYS


@pytest.mark.skipif(not x86_64, reason="syscall numbers are x86_64's")
def test_probe_is_not_fooled_by_pidfd_open():
    # pidfd_open refuses the probe's first two calls with EINVAL, just like
    # process_vm_mmap would; only the ESRCH step tells them apart.
    with pytest.raises(OSError) as info:
        _native.sys_process_vm_mmap(SYS_PIDFD_OPEN, os.getpid(), 0x1000, 4096, 0, 0x80)
    assert info.value.errno == errno.EINVAL
    assert not _native.probe_native(SYS_PIDFD_OPEN)
    assert not _native.probe_native(1000)


@without_native
def test_sys_process_vm_mmap_is_never_called_blindly():
    f = pvmmap.features()
    assert not f.native and "kallsyms" in f.native_reason
    with pytest.raises(OSError) as info:
        pvmmap.sys_process_vm_mmap(os.getpid(), 0x1000, 4096, 0, 0)
    assert info.value.errno == errno.ENOSYS
    assert "kallsyms" in str(info.value)


def python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=120)


@without_native
def test_forced_native_backend_fails_loudly_everywhere():
    code = """
import errno, mmap, ctypes, os, pvmmap
buf = mmap.mmap(-1, 4096)
addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
print(pvmmap.backend)
for call in (lambda: pvmmap.clone(os.getpid(), addr, 4096),
             lambda: pvmmap.process_vm_mmap(os.getpid(), addr, 4096),
             lambda: pvmmap.clone(os.getpid(), addr, 4096, method="native")):
    try:
        call()
        print("no error")
    except OSError as e:
        print(errno.errorcode[e.errno])
"""
    out = python(code, PVMMAP_BACKEND="native")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["native", "ENOSYS", "ENOSYS", "ENOSYS"]


@without_native
def test_syscall_nr_alone_does_not_enable_native():
    out = python("import pvmmap; f = pvmmap.features(); print(f.native, f.backend)",
                 PVMMAP_SYSCALL_NR="434")
    assert out.stdout.split() == ["False", "emulated"]


def test_method_native_with_emulated_backend_is_enosys_or_native():
    import ctypes
    import mmap
    buf = mmap.mmap(-1, 4096)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    if pvmmap.features().native:
        with pvmmap.clone(os.getpid(), addr, 4096, method="native") as m:
            assert m.method == "native"
    else:
        with pytest.raises(OSError) as info:
            pvmmap.clone(os.getpid(), addr, 4096, method="native")
        assert info.value.errno == errno.ENOSYS


@pytest.mark.kernel
@pytest.mark.skipif(os.environ.get("PVMMAP_BACKEND") != "native",
                    reason="only where PVMMAP_BACKEND=native is forced (the VM run)")
def test_forced_native_backend_has_the_kernel_call():
    f = pvmmap.features()
    assert f.native, f.native_reason
    assert f.backend == pvmmap.backend == "native"
    assert f.syscall_nr == _native.DEFAULT_SYSCALL_NR
    assert "kallsyms" in f.native_reason
    # and it really is the call: a page of ours cloned through it
    import ctypes
    import mmap
    buf = mmap.mmap(-1, 4096)
    buf[:6] = b"native"
    addr = ctypes.addressof(ctypes.c_char.from_buffer(buf))
    dst = pvmmap.sys_process_vm_mmap(os.getpid(), addr, 4096, 0, 0)
    try:
        assert dst != addr and ctypes.string_at(dst, 6) == b"native"
    finally:
        pvmmap.munmap(dst, 4096)
