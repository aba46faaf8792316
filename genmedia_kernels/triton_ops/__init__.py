"""Triton kernels of the fused ops, one module per op (kernel + launcher).

Where this sits in a request's way: imported lazily by ``genmedia.kernels.dispatch`` when a
patched module runs its first forward on CUDA (or under ``TRITON_INTERPRET=1`` on the CPU); the
kernels then run in every denoising step. Launchers pick block sizes from the shapes (no
``@triton.autotune``: it needs a GPU driver, and the interpreter must run the same code) and
expect contiguous inputs; ``dispatch`` makes them so. Each op's torch reference is in
``genmedia.kernels.reference``.
"""
