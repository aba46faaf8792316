"""genmedia.kernels: attention backends, fused Triton ops and acceleration options.

Where this sits in a request's way: a catalog entry's ``kernels:`` block (``options``) is
validated at deploy time; when the family worker loads the model, ``patcher`` installs the
attention backend, the fused ops, quantization, step caching and torch.compile into the
denoiser, and they run in every denoising step. See genmedia_kernels/README.md.

This package's import is light (no torch, triton or diffusers): ``options`` is imported by the
catalog validator. The heavy modules import torch/diffusers at the top and triton lazily.
"""
