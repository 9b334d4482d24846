"""View masking: whole channels dropped at the right rate, survivors scaled by 1/(1-p), nothing else changes."""

from __future__ import annotations

import pytest
import torch

from maskgen.train.masking import view_mask


@pytest.mark.parametrize("p", [0.25, 0.5, 0.75])
def test_whole_channels_dropped_at_rate(p):
    torch.manual_seed(1234)
    z = torch.rand(64, 17, 4, 4, 4) + 0.5  # strictly positive: a zero can only come from masking
    out = view_mask(z, p)
    flat = out.flatten(2)
    dropped = (flat == 0).all(dim=2)
    kept = (flat != 0).all(dim=2)
    assert (dropped | kept).all(), "every channel is either entirely zero or entirely kept"
    rate = dropped.float().mean().item()
    n = dropped.numel()
    assert abs(rate - p) < 4 * (p * (1 - p) / n) ** 0.5
    # the image channel (0) is masked too, and each sample independently
    assert dropped[:, 0].any() and not dropped[:, 0].all()
    assert len({tuple(r.tolist()) for r in dropped}) > 1
    # survivors are exactly z / (1 - p); nothing else changes
    survivors = kept[:, :, None, None, None].expand_as(z)
    torch.testing.assert_close(out[survivors], z[survivors] / (1 - p), rtol=1e-6, atol=0)


def test_seeded_and_gradient_free():
    z = torch.rand(4, 5, 2, 2, 2, requires_grad=True)
    torch.manual_seed(7)
    a = view_mask(z, 0.5)
    torch.manual_seed(7)
    b = view_mask(z, 0.5)
    assert torch.equal(a, b)
    assert a.grad_fn is None and not a.requires_grad


def test_rate_zero_is_identity_and_bad_rates_raise():
    z = torch.rand(2, 3, 2, 2, 2)
    assert view_mask(z, 0.0) is z
    for p in (1.0, -0.1):
        with pytest.raises(ValueError, match=str(p)):
            view_mask(z, p)
    with pytest.raises(ValueError, match="shape"):
        view_mask(torch.rand(2, 3, 4), 0.5)


def test_masks_from_an_explicit_generator_are_a_pure_function_of_seed_and_step():
    from maskgen.train.masking import mask_generator

    z = torch.rand(16, 17, 2, 2, 2) + 0.5
    state = torch.get_rng_state()
    a = view_mask(z, 0.5, mask_generator(3, 10))
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is not drawn from
    assert torch.equal(a, view_mask(z, 0.5, mask_generator(3, 10)))
    assert not torch.equal(a, view_mask(z, 0.5, mask_generator(3, 11)))
    assert not torch.equal(a, view_mask(z, 0.5, mask_generator(4, 10)))
    dropped = (a.flatten(2) == 0).all(2)
    assert ((a.flatten(2) == 0).all(2) | (a.flatten(2) != 0).all(2)).all()
    assert abs(dropped.float().mean().item() - 0.5) < 0.1
    kept = ~dropped[:, :, None, None, None].expand_as(z)
    torch.testing.assert_close(a[kept], z[kept] * 2, rtol=1e-6, atol=0)


def test_step_masks_are_the_same_however_the_global_batch_is_split():
    """Data-parallel ranks hold slots of a step's global batch: each sample takes its slot's row of the masks drawn
    for the whole global batch, so 2 ranks x batch 1 mask like 1 process x batch 2 (= view_mask with the step's
    generator)."""
    from maskgen.train.masking import mask_generator, step_view_mask

    z = torch.rand(4, 17, 2, 2, 2) + 0.5
    whole = step_view_mask(z, 0.5, 3, 7, range(4), 4)
    assert torch.equal(whole, view_mask(z, 0.5, mask_generator(3, 7)))
    halves = [step_view_mask(z[r * 2 : (r + 1) * 2], 0.5, 3, 7, range(r * 2, (r + 1) * 2), 4) for r in (0, 1)]
    assert torch.equal(torch.cat(halves), whole)
    assert not torch.equal(halves[1], step_view_mask(z[2:], 0.5, 3, 7, range(2), 4))  # rows differ by slot
