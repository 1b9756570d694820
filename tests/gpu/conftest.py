"""tests/gpu: checks that need an NVIDIA GPU (Triton kernels compiled for it, the refresh off the
critical path on it). scripts/gpu_check.sh runs them with TRITON_INTERPRET=0 in their own pytest
process; elsewhere they skip (no CUDA, or the root conftest's TRITON_INTERPRET=1)."""
