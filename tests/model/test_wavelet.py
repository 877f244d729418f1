import numpy as np
import pytest
import pywt
import torch

from brasyn.model.wavelet import BAND_NAMES, dwt3, idwt3

SHAPES = [(2, 2, 2), (4, 6, 8), (16, 10, 6), (8, 8, 8), (2, 12, 4)]


def _pywt_key(band: str) -> str:
    return band.replace("L", "a").replace("H", "d")


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_dwt3_equals_pywavelets_per_channel_and_band(shape, dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, *shape, generator=gen, dtype=dtype)
    bands = dwt3(x)
    assert bands.shape == (2, 24, *(s // 2 for s in shape))
    assert bands.dtype == dtype
    for b in range(2):
        for c in range(3):
            ref = pywt.dwtn(x[b, c].double().numpy(), "haar", axes=(0, 1, 2))
            for k, name in enumerate(BAND_NAMES):
                ours = bands[b, 8 * c + k].double().numpy()
                np.testing.assert_allclose(ours, ref[_pywt_key(name)], atol=1e-6, rtol=0)


@pytest.mark.parametrize("shape", SHAPES)
def test_idwt3_inverts_dwt3(shape):
    x = torch.randn(1, 2, *shape, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(idwt3(dwt3(x)), x, atol=1e-6, rtol=0)
    bands = torch.randn(1, 16, *(s // 2 for s in shape), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(dwt3(idwt3(bands)), bands, atol=1e-6, rtol=0)


def test_idwt3_equals_pywavelets_inverse():
    bands = torch.randn(1, 8, 3, 5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    coeffs = {_pywt_key(n): bands[0, k].numpy() for k, n in enumerate(BAND_NAMES)}
    ref = pywt.idwtn(coeffs, "haar", axes=(0, 1, 2))
    np.testing.assert_allclose(idwt3(bands)[0, 0].numpy(), ref, atol=1e-12, rtol=0)


def test_dwt3_is_orthonormal():
    x = torch.randn(1, 1, 6, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(dwt3(x).square().sum(), x.square().sum())


def test_dwt3_matches_golden_bands(golden):
    torch.testing.assert_close(dwt3(golden["dwt"]["input"]), golden["dwt"]["bands"], atol=1e-6, rtol=0)
    torch.testing.assert_close(
        idwt3(golden["dwt"]["idwt_bands"]), golden["dwt"]["idwt_output"], atol=1e-6, rtol=0
    )


def test_dwt3_is_differentiable():
    x = torch.randn(1, 1, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: dwt3(v).sin().sum(), (x,))
    assert torch.autograd.gradcheck(
        lambda v: idwt3(v).sin().sum(), (torch.randn(1, 8, 2, 2, 2, dtype=torch.float64, requires_grad=True),)
    )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_dwt3_keeps_low_precision_dtypes(dtype):
    x = torch.rand(1, 1, 4, 4, 4)
    out = dwt3(x.to(dtype))
    assert out.dtype == dtype
    torch.testing.assert_close(out.float(), dwt3(x), atol=2e-2, rtol=2e-2)


def test_odd_sizes_and_wrong_ranks_are_refused():
    with pytest.raises(ValueError, match="even"):
        dwt3(torch.zeros(1, 1, 4, 5, 4))
    with pytest.raises(ValueError, match="B, C, D, H, W"):
        dwt3(torch.zeros(4, 4, 4))
    with pytest.raises(ValueError, match="8\\*C"):
        idwt3(torch.zeros(1, 7, 2, 2, 2))
