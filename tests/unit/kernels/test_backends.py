"""Attention backend selection: every combination of request, device, dtype, head dim, mask and
installed xformers, checked against the registry's own rules; and a table of known answers."""

from __future__ import annotations

import itertools

import pytest

from genmedia.kernels.backends import (
    ATTENTION_CHOICES,
    AUTO,
    AUTO_ORDER,
    BACKENDS,
    BackendUnavailable,
    check_backend,
    select_backend,
)

DEVICES = ("cpu", "cuda", "cuda:1", "mps")
DTYPES = ("float32", "float16", "bfloat16")
HEAD_DIMS = (12, 64, 160, 320)
INSTALLED = (frozenset(), frozenset({"xformers"}))

COMBOS = list(itertools.product(ATTENTION_CHOICES, DEVICES, DTYPES, HEAD_DIMS, (False, True)))


@pytest.mark.parametrize("modules", INSTALLED, ids=("no-xformers", "xformers"))
@pytest.mark.parametrize(("requested", "device", "dtype", "head_dim", "has_mask"), COMBOS)
def test_selection_follows_the_rules(requested, device, dtype, head_dim, has_mask, modules):
    args = (device, dtype, head_dim, has_mask)
    if requested == AUTO:
        name, reason = select_backend(requested, *args, modules=modules)
        assert check_backend(name, *args, modules=modules) is None
        better = AUTO_ORDER[: AUTO_ORDER.index(name)]
        # every better backend was really unavailable, and the reason says why for each
        for skipped in better:
            why = check_backend(skipped, *args, modules=modules)
            assert why is not None
            assert why in reason
        assert (reason == "") == (not better)
        return
    why = check_backend(requested, *args, modules=modules)
    if why is None:
        assert select_backend(requested, *args, modules=modules) == (requested, "")
    else:
        with pytest.raises(BackendUnavailable) as e:
            select_backend(requested, *args, modules=modules)
        assert str(e.value) == why
        assert requested in why


XF = frozenset({"xformers"})
NONE: frozenset[str] = frozenset()


@pytest.mark.parametrize(
    ("requested", "device", "dtype", "head_dim", "mask", "modules", "expected"),
    [
        ("auto", "cuda", "float16", 64, False, XF, "xformers"),
        ("auto", "cuda", "float32", 128, True, XF, "xformers"),
        ("auto", "cuda", "float16", 320, False, XF, "sdpa"),  # head dim > 256
        ("auto", "cuda", "float16", 64, False, NONE, "sdpa"),
        ("auto", "cpu", "float32", 64, False, XF, "sdpa"),
        ("auto", "mps", "float16", 64, True, NONE, "sdpa"),
        ("sdpa", "cpu", "bfloat16", 320, True, NONE, "sdpa"),
        ("sdpa_flash", "cuda", "bfloat16", 128, False, NONE, "sdpa_flash"),
        ("sdpa_flash", "cuda", "float32", 128, False, NONE, "dtypes"),
        ("sdpa_flash", "cuda", "float16", 320, False, NONE, "head dim <= 256"),
        ("sdpa_flash", "cuda", "float16", 64, True, NONE, "mask"),
        ("sdpa_flash", "cpu", "float32", 320, True, NONE, "sdpa_flash"),
        ("sdpa_efficient", "cpu", "float32", 64, False, NONE, "needs cuda"),
        ("sdpa_efficient", "cuda", "float16", 12, False, NONE, "divisible by 8"),
        ("sdpa_efficient", "cuda", "float32", 12, False, NONE, "sdpa_efficient"),
        ("sdpa_math", "mps", "float16", 320, True, NONE, "sdpa_math"),
        ("math", "cpu", "float16", 12, True, NONE, "math"),
        ("xformers", "cpu", "float16", 64, False, XF, "needs cuda"),
        ("xformers", "cuda", "float16", 64, False, NONE, "not installed"),
        ("xformers", "cuda", "float16", 64, True, XF, "xformers"),
        ("flash3", "cuda", "float16", 64, False, XF, "unknown attention backend"),
    ],
)
def test_known_answers(requested, device, dtype, head_dim, mask, modules, expected):
    if expected in BACKENDS:
        name, _ = select_backend(requested, device, dtype, head_dim, mask, modules=modules)
        assert name == expected
    else:
        with pytest.raises(BackendUnavailable, match=expected):
            select_backend(requested, device, dtype, head_dim, mask, modules=modules)


def test_auto_on_cpu_says_why_it_fell_back():
    name, reason = select_backend("auto", "cpu", "float32", 64, False, modules=XF)
    assert name == "sdpa"
    assert reason == "xformers needs cuda (device is cpu)"


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(BackendUnavailable) as e:
        select_backend("flash3", "cuda", "float16", 64, False)
    for name in ATTENTION_CHOICES:
        assert name in str(e.value)


def test_missing_package_says_how_to_install():
    why = check_backend("xformers", "cuda", modules=NONE)
    assert "'xformers'" in why and "gpu" in why


def test_torch_dtypes_are_accepted():
    torch = pytest.importorskip("torch")
    assert select_backend("auto", "cpu", torch.float16, 64, False)[0] == "sdpa"
