"""systolic.hw: Amaranth generators for the accelerator and its board top-levels."""
