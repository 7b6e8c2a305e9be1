"""How the conversion inflates ZLIB-compressed ROOT baskets.

uproot inflates ZLIB baskets with Python's ``zlib``; ISA-L (the ``isal`` package, which uproot
supports as an alternative) inflates the same bytes to the same bytes in about two thirds of
the time. Flat jet ntuples written with ROOT's default settings are ZLIB-compressed, and
inflating is most of reading them, so the conversion reads them with ISA-L. LZMA, LZ4 and
ZSTD baskets (NanoAOD's) are not affected.

uproot's documented switch, ``uproot.ZLIB.library``, is an attribute of the class that
*compresses*; the object that inflates baskets is a separate instance of its base class and
does not see it. :func:`inflate_zlib_with_isal` therefore sets the library on that instance
alone, so that files written with uproot (the simulated samples) keep their bytes.
"""

from __future__ import annotations

import importlib.util

import uproot.compression


def inflate_zlib_with_isal() -> bool:
    """Make uproot inflate ZLIB baskets with ISA-L in this process, where ``isal`` is
    installed; returns whether it does. Idempotent, and cheap enough to call per chunk."""
    inflater = uproot.compression._decompress_ZLIB
    if inflater.library != "isal" and importlib.util.find_spec("isal") is not None:
        inflater.library = "isal"
    return inflater.library == "isal"
