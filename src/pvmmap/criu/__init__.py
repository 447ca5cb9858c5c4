"""CRIU images: read and write the memory part of a CRIU dump.

    import pvmmap
    pvmmap.dump(pid, "DIR")                # a live process's memory as images
    with pvmmap.criu.open("DIR") as image: # its VMAs as Mappings, zero copy
        for m in image.mappings(): ...

    from pvmmap.criu import read_dump
    dump = read_dump("DIR")                # pid from pstree.img
    for vma in dump.vmas:
        for run in dump.pages_of(vma):     # (vaddr, path, offset, nr_pages, flags)
            data = dump.read(run)          # or mmap run.path at run.offset

Writing: write_dump(DIR, pid, Mm(vmas=[...]), ((vaddr, bytes), ...)) for a
whole dump, or write_pagemap(pagemap_file, pages_file, pages_id, runs) to
stream one pagemap + pages pair.  Everything malformed raises ImageError.

images.py is self-contained (stdlib only, no import of the rest of pvmmap),
so it can also be loaded on its own from its file path.
"""

from .images import (  # noqa: F401
    KINDS, PAGE_SIZE, Dump, ImageError, Mm, PageRun, Pagemap, Vma, check_pagemap,
    decode_image, encode_image, encode_mm, encode_pagemap, read_dump, write_dump,
    write_pagemap)
from .dump import DumpResult, dump  # noqa: E402
from .reader import Image, kind_of, open  # noqa: E402

__all__ = [
    "ImageError", "PAGE_SIZE", "Vma", "Mm", "PageRun", "Pagemap", "Dump",
    "read_dump", "decode_image", "encode_image", "encode_mm", "encode_pagemap",
    "write_pagemap", "write_dump", "check_pagemap", "KINDS",
    "dump", "DumpResult", "open", "Image", "kind_of",
]
