"""hemoprofile: deep morphological profiling of blood cells in liquid biopsies."""

__version__ = "0.1.0"

#: Channel names of an HDSCA-style immunofluorescence slide, in acquisition order.
HDSCA_CHANNELS = ("DAPI", "CK", "VIM", "CD45")
