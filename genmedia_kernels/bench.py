"""GPU benchmark of the fused ops and the attention backends; appends rows to bench_results/.

Where this sits in a request's way: nowhere; it measures what the patcher installs into the
denoising step. Run on a machine with CUDA:

    python -m genmedia.kernels.bench                 # every op and backend, bf16
    python -m genmedia.kernels.bench --ops rope adaln --dtype float16 --rounds 7

Without CUDA it prints why and exits 0 without writing anything. Each op is first checked
against its torch reference (``reference.TOLERANCES``); then the stock eager code path and the
Triton kernel are timed alternately (A B A B ..., ``--rounds`` times, each a
``triton.testing.do_bench`` median) and the speedup is the median of the per-round ratios, as
these machines are shared and noisy. Rows (GPU name, commit, date, versions, shape, medians,
GB/s from the bytes model of ``traffic.py``) go to ``genmedia_kernels/bench_results/ops.csv`` and
``attention.csv``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import statistics
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

RESULTS = Path(__file__).resolve().parent / "bench_results"
HEADER = [
    "date",
    "commit",
    "gpu",
    "torch",
    "triton",
    "op",
    "model",
    "shape",
    "dtype",
    "impl",
    "median_ms",
    "min_ms",
    "max_ms",
    "gb_per_s",
    "speedup_vs_eager",
]
OPS = ("groupnorm_silu", "rmsnorm", "rope", "adaln", "gated_residual", "geglu")


@dataclass
class Case:
    op: str
    model: str
    shape: str
    impls: dict[str, Callable[[], object]]  # "eager" first, then the candidates
    # (kernel, reference)
    check: tuple[Callable[[], torch.Tensor], Callable[[], torch.Tensor]] | None
    bytes_model: str | None  # key of traffic.BYTES_PER_ELEMENT
    elements: int


def _commit() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


@dataclass(frozen=True)
class _Inputs:
    """Where and in which dtype the cases' tensors live."""

    dtype: torch.dtype
    device: str

    def randn(self, *shape: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        import torch

        return torch.randn(*shape, device=self.device, dtype=dtype or self.dtype)


def _groupnorm_silu_case(inp: _Inputs, shape: tuple[int, int, int, int]) -> Case:
    import torch

    from genmedia.kernels import reference as ref
    from genmedia.kernels.triton_ops import groupnorm_silu

    x = inp.randn(*shape)
    gn = torch.nn.GroupNorm(32, shape[1]).to(inp.device, inp.dtype)
    act = torch.nn.SiLU()
    w, b = gn.weight, gn.bias

    def kernel() -> torch.Tensor:
        return groupnorm_silu.groupnorm_silu(x, 32, w, b, 1e-5)

    return Case(
        "groupnorm_silu",
        "sdxl",
        str(shape),
        {"eager": lambda: act(gn(x)), "triton": kernel},
        (kernel, lambda: ref.groupnorm_silu(x, 32, w, b, 1e-5)),
        "groupnorm_silu",
        x.numel(),
    )


def _geglu_case(inp: _Inputs, n_tok: int, width: int) -> Case:
    import torch.nn.functional as F

    from genmedia.kernels import reference as ref
    from genmedia.kernels.triton_ops import geglu

    h = inp.randn(2, n_tok, 8 * width)

    def stock() -> torch.Tensor:
        a, g = h.chunk(2, dim=-1)
        return a * F.gelu(g)

    def kernel() -> torch.Tensor:
        return geglu.geglu(h)

    return Case(
        "geglu",
        "sdxl",
        str(tuple(h.shape)),
        {"eager": stock, "triton": kernel},
        (kernel, lambda: ref.geglu(h)),
        "geglu",
        h.numel() // 2,
    )


def _rmsnorm_case(inp: _Inputs, q: torch.Tensor) -> Case:
    import torch
    from diffusers.models.normalization import RMSNorm

    from genmedia.kernels import reference as ref
    from genmedia.kernels.triton_ops import rmsnorm

    head_dim = q.shape[-1]
    torch_norm = torch.nn.RMSNorm(head_dim, eps=1e-6).to(inp.device, inp.dtype)
    diffusers_norm = RMSNorm(head_dim, eps=1e-6).to(inp.device, inp.dtype)
    w = torch_norm.weight

    def kernel() -> torch.Tensor:
        return rmsnorm.rms_norm(q, w, None, 1e-6, inp.dtype)

    return Case(
        "rmsnorm",
        "flux",
        str(tuple(q.shape)),
        {
            "eager": lambda: torch_norm(q),
            "eager_diffusers_rmsnorm": lambda: diffusers_norm(q),
            "triton": kernel,
        },
        (kernel, lambda: ref.rms_norm(q, w, None, 1e-6, inp.dtype)),
        "rmsnorm_torch",
        q.numel(),
    )


def _rope_case(inp: _Inputs, q: torch.Tensor) -> Case:
    import torch
    from diffusers.models.embeddings import apply_rotary_emb

    from genmedia.kernels import reference as ref
    from genmedia.kernels.triton_ops import rope

    tokens, head_dim = q.shape[1], q.shape[3]
    cos = inp.randn(tokens, head_dim, dtype=torch.float32)
    sin = inp.randn(tokens, head_dim, dtype=torch.float32)
    freqs: tuple[torch.Tensor, torch.Tensor] = (cos, sin)

    def kernel() -> torch.Tensor:
        return rope.rope(q, cos, sin)

    return Case(
        "rope",
        "flux",
        str(tuple(q.shape)),
        {
            # diffusers annotates the (cos, sin) pair as tuple[Tensor]
            "eager": lambda: apply_rotary_emb(q, freqs, sequence_dim=1),  # type: ignore[arg-type]
            "triton": kernel,
        },
        (kernel, lambda: ref.rope(q, cos, sin)),
        "rope",
        q.numel(),
    )


def _adaln_case(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> Case:
    import torch

    from genmedia.kernels import reference as ref
    from genmedia.kernels.triton_ops import adaln

    ln = torch.nn.LayerNorm(x.shape[-1], elementwise_affine=False, eps=1e-6)

    def kernel() -> torch.Tensor:
        return adaln.adaln_modulate(x, shift, scale, 1e-6)

    return Case(
        "adaln",
        "flux",
        str(tuple(x.shape)),
        {"eager": lambda: ln(x) * (1 + scale[:, None]) + shift[:, None], "triton": kernel},
        (kernel, lambda: ref.adaln_modulate(x, shift, scale, 1e-6)),
        "adaln",
        x.numel(),
    )


def _gated_residual_case(x: torch.Tensor, gate: torch.Tensor, y: torch.Tensor) -> Case:
    from genmedia.kernels import reference as ref
    from genmedia.kernels.triton_ops import adaln

    def kernel() -> torch.Tensor:
        return adaln.gated_residual(x, gate, y)

    return Case(
        "gated_residual",
        "flux",
        str(tuple(x.shape)),
        {"eager": lambda: x + gate.unsqueeze(1) * y, "triton": kernel},
        (kernel, lambda: ref.gated_residual(x, gate, y)),
        "gated_residual",
        x.numel(),
    )


def _op_cases(
    ops: list[str], dtype: torch.dtype, device: str = "cuda", small: bool = False
) -> list[Case]:
    """The benchmark cases at the real 1024^2 shapes (``small``: tiny stand-ins, for a smoke
    test of this script under the Triton interpreter)."""
    inp = _Inputs(dtype, device)
    cases: list[Case] = []
    if "groupnorm_silu" in ops:
        gn_shapes = [(2, 64, 5, 3)] if small else [(2, 320, 128, 128), (2, 1280, 32, 32)]
        cases += [_groupnorm_silu_case(inp, shape) for shape in gn_shapes]
    if "geglu" in ops:
        sizes = [(7, 4)] if small else [(4096, 640), (1024, 1280)]
        cases += [_geglu_case(inp, n_tok, width) for n_tok, width in sizes]
    # Flux: 512 text + 4096 image tokens, 24 heads of 128, dim 3072
    tokens, heads, head_dim, dim = (6, 3, 8, 40) if small else (4608, 24, 128, 3072)
    q = inp.randn(1, tokens, heads, head_dim)
    if "rmsnorm" in ops:
        cases.append(_rmsnorm_case(inp, q))
    if "rope" in ops:
        cases.append(_rope_case(inp, q))
    if "adaln" in ops or "gated_residual" in ops:
        x = inp.randn(1, tokens, dim)
        y = inp.randn(1, tokens, dim)
        shift, scale, gate = inp.randn(1, 3 * dim).chunk(3, dim=1)
        if "adaln" in ops:
            cases.append(_adaln_case(x, shift, scale))
        if "gated_residual" in ops:
            cases.append(_gated_residual_case(x, gate, y))
    return cases


def _attention_cases(dtype: torch.dtype) -> list[Case]:
    import torch

    from genmedia.kernels.attention import get_impl
    from genmedia.kernels.backends import BACKENDS, check_backend

    cases = []
    for model, (b, h, s, d) in [("sdxl", (2, 10, 4096, 64)), ("flux", (1, 24, 4608, 128))]:
        q, k, v = (torch.randn(b, h, s, d, device="cuda", dtype=dtype) for _ in range(3))
        impls: dict[str, Callable[[], object]] = {}
        # the stock diffusers path (torch SDPA, kernel picked by torch) is the "eager" baseline;
        # the float32 reference ("math") is no serving option and is not timed
        for name in ("sdpa", *(n for n in BACKENDS if n not in ("sdpa", "math"))):
            if check_backend(name, "cuda", dtype, d) is not None:
                continue
            label = "eager" if name == "sdpa" else name
            impls[label] = partial(get_impl(name), q, k, v)
        cases.append(Case("attention", model, str((b, h, s, d)), impls, None, None, 0))
    return cases


def _measure(case: Case, rounds: int) -> dict[str, dict[str, float]]:
    from triton.testing import do_bench

    times: dict[str, list[float]] = {name: [] for name in case.impls}
    ratios: dict[str, list[float]] = {name: [] for name in case.impls}
    for _ in range(rounds):
        this_round = {name: do_bench(fn, warmup=10, rep=50) for name, fn in case.impls.items()}
        for name, ms in this_round.items():
            times[name].append(ms)
            ratios[name].append(this_round["eager"] / ms)
    return {
        name: {
            "median": statistics.median(times[name]),
            "min": min(times[name]),
            "max": max(times[name]),
            "speedup": statistics.median(ratios[name]),
        }
        for name in case.impls
    }


def _check(case: Case, dtype: torch.dtype) -> None:
    import torch

    from genmedia.kernels.reference import tolerance

    if case.check is None:
        return
    kernel, reference = case.check
    atol, rtol = tolerance(case.op, dtype)
    torch.testing.assert_close(kernel().float(), reference().float(), atol=atol, rtol=rtol)


def _append(path: Path, rows: list[dict[str, object]]) -> None:
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def _case_rows(case: Case, rounds: int, meta: dict[str, str]) -> list[dict[str, object]]:
    """Time one case; a CSV row per implementation (also printed)."""
    from genmedia.kernels.traffic import bytes_per_element

    rows: list[dict[str, object]] = []
    for impl, m in _measure(case, rounds).items():
        gbps = ""
        if case.bytes_model:
            eager_b, fused_b = bytes_per_element(case.bytes_model)
            per_elem = fused_b if impl == "triton" else eager_b
            gbps = f"{case.elements * per_elem / (m['median'] * 1e-3) / 1e9:.1f}"
        rows.append(
            {
                **meta,
                "op": case.op,
                "model": case.model,
                "shape": case.shape,
                "impl": impl,
                "median_ms": f"{m['median']:.4f}",
                "min_ms": f"{m['min']:.4f}",
                "max_ms": f"{m['max']:.4f}",
                "gb_per_s": gbps,
                "speedup_vs_eager": f"{m['speedup']:.3f}",
            }
        )
        print(
            f"{case.op:15s} {case.model:5s} {case.shape:28s} {impl:24s} "
            f"{m['median']:8.4f} ms  x{m['speedup']:.2f}"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ops", nargs="*", default=list(OPS), choices=OPS)
    parser.add_argument("--no-attention", action="store_true", help="skip attention backends")
    parser.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16"))
    parser.add_argument("--rounds", type=int, default=5, help="alternating A/B rounds")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory of the CSVs")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print(
            "CUDA is not available: the kernel benchmark needs a GPU. Nothing measured, nothing "
            "written (the CPU checks the kernels' correctness with TRITON_INTERPRET=1 in "
            "tests/unit/kernels instead)."
        )
        return 0
    import triton

    dtype = getattr(torch, args.dtype)
    meta = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": _commit(),
        "gpu": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "dtype": args.dtype,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    groups = [("ops.csv", _op_cases(args.ops, dtype))]
    if not args.no_attention:
        groups.append(("attention.csv", _attention_cases(dtype)))
    for filename, cases in groups:
        rows: list[dict[str, object]] = []
        for case in cases:
            _check(case, dtype)
            rows += _case_rows(case, args.rounds, meta)
        _append(args.out / filename, rows)
        print(f"appended {len(rows)} rows to {args.out / filename}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
