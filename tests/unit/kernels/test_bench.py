"""The GPU benchmark script without a GPU: it says why and writes nothing; its cases are right
(checked on tiny stand-in shapes under the interpreter); the committed CSVs have its header;
the bytes model behind the README is consistent."""

from __future__ import annotations

import csv

import pytest
import torch

from genmedia.kernels import bench, traffic
from genmedia.kernels.reference import tolerance


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU path")
def test_without_cuda_it_skips_and_writes_nothing(tmp_path, capsys):
    assert bench.main(["--out", str(tmp_path)]) == 0
    assert "CUDA is not available" in capsys.readouterr().out
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["ops.csv", "attention.csv"])
def test_committed_csv_has_the_bench_header(name):
    with (bench.RESULTS / name).open() as f:
        assert next(csv.reader(f)) == bench.HEADER


def test_cases_check_and_eager_paths_agree(kernel_device):
    cases = bench._op_cases(list(bench.OPS), torch.float32, device=kernel_device, small=True)
    assert {c.op for c in cases} == set(bench.OPS)
    for case in cases:
        bench._check(case, torch.float32)  # kernel vs reference
        _, reference = case.check
        expected = reference().float()
        atol, rtol = tolerance(case.op, torch.float32)
        for name, fn in case.impls.items():
            out = fn().float()
            torch.testing.assert_close(out, expected, atol=atol, rtol=rtol, msg=name)


def test_bytes_model_is_consistent():
    for op, (eager, fused, how) in traffic.BYTES_PER_ELEMENT.items():
        assert 0 < fused <= eager, op
        assert how
    rows = {(r["model"], r["op"]): r for r in traffic.table()}
    assert rows[("flux", "rope")]["ratio"] == pytest.approx(12.0, rel=0.01)
    assert rows[("sdxl", "groupnorm_silu")]["ratio"] == pytest.approx(5 / 3)
    assert rows[("flux", "rmsnorm_torch")]["saved_s_per_image"] == 0
    # SDXL at 1024^2: the 35 GroupNorm -> SiLU sites of a CFG step touch 267 M elements
    assert rows[("sdxl", "groupnorm_silu")]["elements"] == 267_386_880
    assert "|" in traffic.markdown()
