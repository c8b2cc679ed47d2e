"""Development tools that are not installed with fastmvit (the GPU-compile harness)."""
