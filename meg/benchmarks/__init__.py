"""Benchmarks: library functions that measure and write JSON + markdown + PNG under a results directory."""
