"""Native CPU kernels (C++ through XLA's FFI), compiled on first use (build.py)."""
