"""ConvVAE / conditional VAE: shapes for any channels and patch size, condition checks, loss, spec round
trip, and that a few steps of training lower the loss."""

import numpy as np
import pytest
import torch

from hemoprofile.nn.vae import VAESpec, build_vae, vae_loss

torch.set_num_threads(1)


@pytest.mark.parametrize("channels,size,conditions", [(1, 16, 0), (4, 32, 3), (3, 30, 0), (3, 64, 2)])
def test_shapes_any_channels_and_patch_size(channels, size, conditions):
    vae = build_vae(VAESpec(channels, size, latent_dim=5, widths=(4, 8), n_conditions=conditions))
    c = torch.eye(conditions)[torch.zeros(2, dtype=torch.long)] if conditions else None
    logits, mu, logvar = vae(torch.rand(2, channels, size, size), c)
    assert logits.shape == (2, channels, size, size)
    assert mu.shape == logvar.shape == (2, 5)


def test_conditional_vae_requires_condition_of_right_shape():
    vae = build_vae(VAESpec(2, 16, 3, (4,), n_conditions=2))
    with pytest.raises(ValueError, match="needs c of shape"):
        vae(torch.rand(2, 2, 16, 16))
    with pytest.raises(ValueError, match="needs c of shape"):
        vae(torch.rand(2, 2, 16, 16), torch.ones(2, 3))


def test_condition_changes_the_decoder_output_once_trained_weights_differ():
    torch.manual_seed(0)
    vae = build_vae(VAESpec(1, 8, 2, (4,), n_conditions=2)).eval()
    # FiLM starts as the identity; perturb it as training would
    for stage in vae.up:
        torch.nn.init.normal_(stage.film.weight)
    z = torch.zeros(1, 2)
    a = vae.decode(z, torch.tensor([[1.0, 0.0]]))
    b = vae.decode(z, torch.tensor([[0.0, 1.0]]))
    assert not torch.allclose(a, b)


def test_eval_mode_is_deterministic_and_uses_the_mean():
    vae = build_vae(VAESpec(2, 16, 3, (4, 8))).eval()
    x = torch.rand(3, 2, 16, 16)
    l1, mu, _ = vae(x)
    l2, _, _ = vae(x)
    assert torch.equal(l1, l2)
    assert torch.allclose(l1, vae.decode(mu))


def test_loss_terms():
    x = torch.rand(4, 1, 8, 8)
    mu, logvar = torch.zeros(4, 3), torch.zeros(4, 3)
    _, _, kl = vae_loss(torch.zeros_like(x), x, mu, logvar)
    assert float(kl) == 0.0  # the prior itself
    loss, recon, kl = vae_loss(torch.zeros_like(x), x, torch.ones(4, 3), logvar, beta=2.0)
    assert float(kl) == pytest.approx(1.5)  # 0.5 * sum(mu^2) over 3 units
    assert float(loss) == pytest.approx(float(recon) + 2.0 * 1.5)


def test_spec_round_trip():
    spec = VAESpec(3, 20, 6, (4, 8, 16), 4)
    assert VAESpec.from_dict(spec.to_dict()) == spec
    assert spec.padded_size == 24 and spec.grid == 3
    with pytest.raises(TypeError):
        VAESpec.from_dict({**spec.to_dict(), "foreign": 1})


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x = torch.from_numpy((rng.random((32, 1, 8, 8)) > 0.5).astype(np.float32))
    vae = build_vae(VAESpec(1, 8, 4, (8,)))
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    losses = []
    for _ in range(30):
        logits, mu, logvar = vae(x)
        loss, _, _ = vae_loss(logits, x, mu, logvar, beta=0.1)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0]
