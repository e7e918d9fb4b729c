"""Readers of input slides: multi-channel (OME-)TIFF files and HDSCA-style frame folders.

Every reader opens a slide lazily and serves rectangular regions of one channel at a time
(:meth:`SlideSource.read_region`), so no stage ever has to hold a whole slide (several gigapixels) in
memory. The rest of the pipeline sees only :class:`SlideSource`; which file layout a slide has is this
package's business.

How pixels are reached, cheapest first:

- uncompressed, contiguous TIFF data is memory-mapped, so a region read touches only its own rows;
- compressed or scattered TIFF data is read through tifffile's zarr store, one storage chunk (TIFF tile
  or strip) at a time, with a byte-bounded LRU cache of decoded chunks so that neighbouring regions
  reuse a strip instead of decoding it again;
- a frame folder decodes whole frame files, with an LRU cache of ``2 * cols`` frames, so reading a
  channel row band by row band decodes each frame about once.

Modules: :mod:`~hemoprofile.io.slide_sources.base` (:class:`SlideSource`, the block cache and region
assembly), :mod:`~hemoprofile.io.slide_sources.tiff` (TIFF / OME-TIFF files),
:mod:`~hemoprofile.io.slide_sources.frame_folder` (frame folders),
:mod:`~hemoprofile.io.slide_sources.opening` (:func:`open_slide_source`, which picks the reader).
"""

from hemoprofile.io.slide_sources.base import SLIDE_FORMATS, SlideSource
from hemoprofile.io.slide_sources.frame_folder import FrameFolderSource
from hemoprofile.io.slide_sources.opening import open_slide_source
from hemoprofile.io.slide_sources.tiff import TIFF_CHUNK_CACHE_BYTES, TiffSlideSource

__all__ = [
    "SLIDE_FORMATS", "TIFF_CHUNK_CACHE_BYTES", "FrameFolderSource", "SlideSource", "TiffSlideSource",
    "open_slide_source",
]
