"""The DWT is PyWavelets' Haar on each channel alone, inverts exactly, and never mixes channels."""

from __future__ import annotations

import numpy as np
import pywt
import torch

from rsna_phase0.models.wavelet import dwt3, idwt3


def test_dwt_equals_pywavelets_per_channel_and_round_trips():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8, 8, dtype=torch.float64)
    low, highs = dwt3(x, level=2)
    assert low.shape == (2, 3, 2, 2, 2) and len(highs) == 2
    for b in range(2):
        for c in range(3):
            ref = pywt.wavedecn(x[b, c].numpy(), "haar", mode="zero", level=2)
            np.testing.assert_allclose(low[b, c].numpy(), ref[0], atol=1e-12)
            for level, detail in enumerate(ref[1:]):
                for key, band in detail.items():
                    np.testing.assert_allclose(highs[level][key][b, c].numpy(), band, atol=1e-12)
    torch.testing.assert_close(idwt3(low, highs), x, atol=1e-12, rtol=0)


def test_level_one_matches_pywt_dwtn():
    x = torch.randn(1, 2, 4, 4, 4, dtype=torch.float64)
    low, highs = dwt3(x, level=1)
    ref = pywt.dwtn(x[0, 1].numpy(), "haar", mode="zero")
    np.testing.assert_allclose(low[0, 1].numpy(), ref["aaa"], atol=1e-12)
    np.testing.assert_allclose(highs[0]["dad"][0, 1].numpy(), ref["dad"], atol=1e-12)


def test_channels_never_mix():
    torch.manual_seed(1)
    x = torch.randn(2, 4, 8, 8, 8)
    perturbed = x.clone()
    perturbed[:, 2] += torch.randn(2, 8, 8, 8)
    low_a, highs_a = dwt3(x, level=2)
    low_b, highs_b = dwt3(perturbed, level=2)
    others = [0, 1, 3]
    assert torch.equal(low_a[:, others], low_b[:, others])
    assert not torch.equal(low_a[:, 2], low_b[:, 2])
    for da, db in zip(highs_a, highs_b, strict=True):
        for key in da:
            assert torch.equal(da[key][:, others], db[key][:, others])


def test_dwt_runs_under_autocast_and_rejects_odd_sizes():
    x = torch.randn(1, 2, 8, 8, 8).bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, highs = dwt3(x, level=1)
        assert idwt3(low, highs).shape == (1, 2, 8, 8, 8)
    try:
        dwt3(torch.randn(1, 1, 6, 6, 6), level=2)
    except ValueError as error:
        assert "divisible" in str(error)
    else:
        raise AssertionError("odd size accepted")
