"""CRIU images: read and write the memory part of a CRIU dump.

images.py is self-contained (stdlib only, no import of the rest of pvmmap),
so it can also be loaded on its own from its file path.
"""

from .images import (  # noqa: F401
    KINDS, PAGE_SIZE, Dump, ImageError, Mm, PageRun, Pagemap, Vma, check_pagemap,
    decode_image, encode_image, encode_mm, read_dump, write_dump, write_pagemap)

__all__ = [
    "ImageError", "PAGE_SIZE", "Vma", "Mm", "PageRun", "Pagemap", "Dump",
    "read_dump", "decode_image", "encode_image", "encode_mm", "write_pagemap",
    "write_dump", "check_pagemap", "KINDS",
]
