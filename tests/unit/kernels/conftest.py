"""Kernel tests: Triton ops run on CUDA when there is one, else under Triton's CPU interpreter.

Without CUDA, ``TRITON_INTERPRET=1`` is set for the tests of this package only (and restored
after them, so Ray workers or other test directories of the same session do not inherit it).
That is early enough: genmedia imports triton lazily, ``genmedia.kernels.triton_ops`` (which
holds the ``@triton.jit`` decorators) is first imported inside these tests, and triton 3.x reads
the variable when a kernel is decorated and when ``dispatch.resolve_mode`` asks.
"""

from __future__ import annotations

import os

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="package", autouse=True)
def _triton_interpreter_on_cpu():
    if DEVICE == "cuda":
        yield
        return
    before = os.environ.get("TRITON_INTERPRET")
    os.environ.setdefault("TRITON_INTERPRET", "1")
    yield
    if before is None:
        os.environ.pop("TRITON_INTERPRET", None)
    else:
        os.environ["TRITON_INTERPRET"] = before


@pytest.fixture(scope="package")
def kernel_device(_triton_interpreter_on_cpu) -> str:
    """Where the Triton kernels run: 'cuda', or 'cpu' with the interpreter (fails otherwise)."""
    from genmedia.kernels.dispatch import resolve_mode

    mode, reason = resolve_mode(DEVICE)
    if mode == "reference":
        pytest.fail(f"Triton kernels cannot run in this session: {reason}")
    return DEVICE


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)
