"""lmc.ops: ELU and tanh through the vectorised exp / sigmoid agree with ATen's, values and
gradients, in fp32 and bf16; the ELU module is a drop-in nn.ELU."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmc import ops

# negatives down to where exp underflows, values around 0, large positives
X = torch.cat([torch.linspace(-120, 40, 20001), torch.linspace(-1e-3, 1e-3, 2001),
               torch.tensor([0.0, -0.0, 1e-30, -1e-30])])


def test_elu_and_tanh_match_aten_within_fp32_rounding():
    assert torch.equal(ops.elu(X) > 0, F.elu(X) > 0)
    torch.testing.assert_close(ops.elu(X), F.elu(X), rtol=0, atol=3e-7)
    torch.testing.assert_close(ops.tanh(X), torch.tanh(X), rtol=0, atol=3e-7)
    assert ops.elu(torch.tensor([-200.0])).item() == -1.0 and ops.tanh(X).abs().max() <= 1


def test_gradients_match_aten():
    for fast, aten in ((ops.elu, F.elu), (ops.tanh, torch.tanh)):
        x1, x2 = X.clone().requires_grad_(), X.clone().requires_grad_()
        g = torch.randn_like(X)
        (fast(x1) * g).sum().backward()
        (aten(x2) * g).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=0, atol=1e-6)


def test_bf16_is_computed_in_fp32_and_rounded_once():
    xb = X.bfloat16()
    out = ops.elu(xb)
    assert out.dtype == torch.bfloat16
    # the fp32 result (within 3e-7 of ATen's) rounded once: one bf16 rounding step at most
    ref = F.elu(xb.float())
    assert ((out.float() - ref).abs() <= 2 ** -8 * ref.abs() + 3e-7).all()
    assert ops.tanh(xb).dtype == torch.bfloat16


def test_elu_module_is_a_drop_in_nn_elu():
    m = ops.ELU()
    assert isinstance(m, nn.ELU) and repr(m) == repr(nn.ELU()) and m.state_dict() == {}
    torch.testing.assert_close(m(X), nn.ELU()(X), rtol=0, atol=3e-7)
