"""systolic.sim: cocotb testbenches and their runners (Icarus, Verilator)."""
