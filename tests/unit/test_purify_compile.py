"""DVAEPurifier's opt-in torch.compile (a measured speed-up on 3D volumes) purifies as the eager stages do."""

from __future__ import annotations

import pytest
import torch

from trust_monai.networks.dvae import DVAE
from trust_monai.purify import DVAEPurifier


@pytest.mark.slow  # torch.compile's warm-up (a C++ build) takes 20-40 s on 2 cores
def test_compiled_purifier_equals_eager(tmp_path):
    torch.manual_seed(0)
    nets = [DVAE(3, 1, 3, channels=(4, 8), latent_channels=2).eval() for _ in range(2)]
    ckpts = [tmp_path / f"stage{k}.pt" for k in range(2)]
    for c, net in zip(ckpts, nets):
        torch.save(net.state_dict(), c)
    factory = lambda: DVAE(3, 1, 3, channels=(4, 8), latent_channels=2)  # noqa: E731
    eager, comp = DVAEPurifier(factory, ckpts), DVAEPurifier(factory, ckpts, compile=True)
    x, y = torch.rand(1, 1, 16, 16, 16), torch.randint(0, 3, (1, 1, 16, 16, 16))
    with torch.inference_mode():
        ref, got = eager.apply(x, None, y), comp.apply(x, None, y)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    assert comp.fingerprint() == eager.fingerprint()
    assert set(comp.state_dict()) == set(eager.state_dict())  # compiling adds nothing to what is saved
