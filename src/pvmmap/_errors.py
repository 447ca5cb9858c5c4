"""Errors: OSError with the contract's errno and a message a user can act on."""

import os

#: The backends PVMMAP_BACKEND accepts; error messages are built from it.
BACKENDS = ("auto", "native", "emulated")

#: What clone(method=...) accepts.
METHODS = ("auto", "native", "copy", "lazy")


def describe_range(start, length):
    if start is None:
        return None
    if length is None:
        return f"{start:#x}"
    return f"{start:#x}-{start + length:#x}"


def os_error(err, what, pid=None, start=None, length=None, hint=None):
    """OSError(err, "strerror (what, pid P, range) hint"); Python picks the
    subclass (ProcessLookupError, PermissionError, FileExistsError, ...)."""
    parts = [what]
    if pid is not None:
        parts.append(f"pid {pid}")
    rng = describe_range(start, length)
    if rng:
        parts.append(rng)
    msg = f"{os.strerror(err)} ({', '.join(parts)})"
    if hint:
        msg += f": {hint}"
    return OSError(err, msg)

