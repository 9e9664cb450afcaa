"""systolic.hw: Amaranth generators for the accelerator and its board top-levels."""

from ._meminit import install as _install_meminit

# Every conversion of a design goes through this package: memories' contents emitted at once.
_install_meminit()
