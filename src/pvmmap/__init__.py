"""pvmmap: duplicate a memory range of another process into this one.

    with pvmmap.clone(pid, addr, length) as m:
        data = memoryview(m)

On a kernel with process_vm_mmap() (the project's own port) the native call
copies page-table entries, as fork() does.  Everywhere else it is emulated as
faithfully as the kernel allows: shared memory is mapped shared
(/proc/PID/map_files), private memory is copied as a snapshot of the pages
that exist (PAGEMAP_SCAN + process_vm_readv), file mappings map the same
file.  docs/design.md has the contract.
"""

from __future__ import annotations

from pvmmap import _native
from pvmmap._api import clone, maps, munmap, process_vm_mmap, sys_process_vm_mmap
from pvmmap._contract import Part
from pvmmap._errors import BACKENDS, METHODS, ConfigError
from pvmmap._features import Features, active_backend, features
from pvmmap._maps import KINDS, Region
from pvmmap._native import Mapping
from pvmmap import criu
from pvmmap.criu import dump

__all__ = [
    "clone", "process_vm_mmap", "sys_process_vm_mmap", "munmap", "maps",
    "features", "Features", "Mapping", "Part", "Region", "KINDS",
    "PVMMAP_FIXED", "PVMMAP_FIXED_NOREPLACE", "BACKENDS", "METHODS", "backend",
    "dump", "criu", "ConfigError",
]
__version__ = "0.1.0"

PVMMAP_FIXED: int = _native.FIXED
PVMMAP_FIXED_NOREPLACE: int = _native.FIXED_NOREPLACE

backend: str


def __getattr__(name: str) -> str:
    # `backend` is computed on first use: detection reads /proc/kallsyms.
    if name == "backend":
        return active_backend()
    raise AttributeError(f"module 'pvmmap' has no attribute {name!r}")
