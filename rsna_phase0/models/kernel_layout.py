"""MinkowskiEngine kernel layout <-> Conv3d weight layout (no MinkowskiEngine import: works on plain tensors).

MinkowskiEngine stores a convolution kernel as (K^3, C_in, C_out) with the kernel offset index running fastest
along the first spatial axis: index = o0 + k*o1 + k^2*o2 (measured against Conv3d; tests/test_model_export.py
checks it), so Conv3d's (C_out, C_in, k0, k1, k2) weight is kernel.view(k, k, k, C_in, C_out).permute(4, 3, 2, 1, 0).
The map is a differentiable view, so a dense convolution can run on the sparse layer's own parameter.
"""

from __future__ import annotations

import torch


def minkowski_kernel_to_conv3d(kernel: torch.Tensor) -> torch.Tensor:
    volume, c_in, c_out = kernel.shape
    k = round(volume ** (1 / 3))
    if k**3 != volume:
        raise ValueError(f"kernel with {volume} offsets is not a cube")
    return kernel.reshape(k, k, k, c_in, c_out).permute(4, 3, 2, 1, 0).contiguous()
