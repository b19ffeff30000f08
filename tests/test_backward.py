"""Every backward of numpy_mixer.backward against torch autograd, in float64, on seeded random inputs.

Each layer: our (dx, grads) vs x.grad and every parameter's .grad after out.backward(dout), with dout
random. Then the whole model (timm's MlpMixer, small) through the cross-entropy loss.
Tolerance: max |ours - torch| <= 1e-8 * max |torch|, per tensor.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from timm.models.mlp_mixer import MixerBlock, MlpMixer

from numpy_mixer import backward, layers
from numpy_mixer.checkpoint import random_state_dict, random_tensor
from numpy_mixer.model import flatten, nest
from numpy_mixer.weights import MixerConfig

RTOL = 1e-8
B, N, C, T, H, P = 3, 16, 12, 6, 48, 4  # small sizes: 16 tokens = a 16x16 image in 4x4 patches


def t(a, grad=False):
    return torch.from_numpy(np.ascontiguousarray(a)).requires_grad_(grad)


def randomise(module, rng):
    """float64 module with every parameter random at trained scale (timm zero-initialises some)."""
    module = module.double()
    for name, p in module.named_parameters():
        p.data = torch.from_numpy(random_tensor(name, p.shape, rng))
    return module, nest({k: v.detach().numpy().copy() for k, v in module.named_parameters()})


def assert_grad(name, ours, reference):
    reference = reference.detach().numpy()
    assert ours.dtype == np.float64, f"{name}: dtype {ours.dtype}"
    assert ours.shape == reference.shape, f"{name}: shape {ours.shape}, torch {reference.shape}"
    scale = np.abs(reference).max()
    assert scale > 1e-4, f"{name}: torch's gradient is ~0 ({scale:.1e}): the check could not fail"
    err = np.abs(ours - reference).max() / scale
    assert err <= RTOL, f"{name}: max diff {err:.1e} of max |grad|, above {RTOL:.0e}"


def check_layer(forward, backward_fn, torch_fn, x, params, rng, module=None, prefixes=("",)):
    """Run ours and torch's on x, backpropagate the same random dout, compare dx and every gradient
    of module's parameters whose names start with one of prefixes."""
    out, cache = forward(x, **params)
    xt = t(x, grad=True)
    out_t = torch_fn(xt)
    np.testing.assert_allclose(out, out_t.detach().numpy(), rtol=0, atol=1e-12 * np.abs(out).max())
    dout = rng.standard_normal(out.shape)
    out_t.backward(t(dout))
    result = backward_fn(dout, cache)
    dx, grads = result if isinstance(result, tuple) else (result, {})
    assert_grad("dx", dx, xt.grad)
    if module is not None:
        flat = flatten(grads)
        names = {k: p for k, p in module.named_parameters() if k.startswith(prefixes)}
        assert sorted(flat) == sorted(names), "gradients must have the parameters' keys"
        for key, p in names.items():
            assert_grad(key, flat[key], p.grad)


def test_linear(rng):
    module, params = randomise(torch.nn.Linear(C, H), rng)
    check_layer(backward.linear_forward, backward.linear_backward, module, rng.standard_normal((B, N, C)),
                params, rng, module)


def test_layer_norm(rng):
    module, params = randomise(torch.nn.LayerNorm(C, eps=1e-6), rng)
    x = 3 + 2 * rng.standard_normal((B, N, C))  # an offset and a scale for the norm to remove
    check_layer(backward.layer_norm_forward, backward.layer_norm_backward, module, x, params, rng, module)


def test_gelu(rng):
    x = 3 * rng.standard_normal((B, N, C))
    x.flat[:3] = [0.0, 1.0, -1.0]  # zero, and the points where erf switches formula
    check_layer(backward.gelu_forward, backward.gelu_backward, F.gelu, x, {}, rng)


def test_mlp(rng):
    module, params = randomise(Mlp(C, H), rng)
    check_layer(backward.mlp_forward, backward.mlp_backward, module, rng.standard_normal((B, N, C)), params,
                rng, module)


@pytest.fixture
def block(rng):
    return randomise(MixerBlock(C, N, mlp_ratio=(T / C, H / C)), rng)


def test_token_mixing(block, rng):
    module, params = block
    check_layer(backward.token_mixing_forward, backward.token_mixing_backward,
                lambda x: x + module.mlp_tokens(module.norm1(x).transpose(1, 2)).transpose(1, 2),
                rng.standard_normal((B, N, C)), {k: params[k] for k in ("norm1", "mlp_tokens")}, rng,
                module, ("norm1.", "mlp_tokens."))


def test_channel_mixing(block, rng):
    module, params = block
    check_layer(backward.channel_mixing_forward, backward.channel_mixing_backward,
                lambda x: x + module.mlp_channels(module.norm2(x)),
                rng.standard_normal((B, N, C)), {k: params[k] for k in ("norm2", "mlp_channels")}, rng,
                module, ("norm2.", "mlp_channels."))


def test_mixer_block(block, rng):
    module, params = block
    check_layer(backward.mixer_block_forward, backward.mixer_block_backward, module,
                rng.standard_normal((B, N, C)), params, rng, module)


def test_stem(rng):
    module, params = randomise(PatchEmbed(img_size=16, patch_size=P, in_chans=3, embed_dim=C), rng)
    check_layer(lambda x, proj: backward.stem_forward(x, proj, P), backward.stem_backward, module,
                rng.standard_normal((B, 3, 16, 16)), params, rng, module)


def test_unpatch_inverts_patchify(rng):
    x = rng.standard_normal((B, 3, 16, 16)).astype(np.float32)
    assert np.array_equal(backward.unpatch(layers.patchify(x, P), x.shape, P), x)  # an exact inverse


def test_global_pool(rng):
    check_layer(lambda x: backward.global_pool_forward(x), backward.global_pool_backward, lambda x: x.mean(1),
                rng.standard_normal((B, N, C)), {}, rng)


def test_head(rng):
    module, params = randomise(torch.nn.Linear(C, 10), rng)
    check_layer(backward.head_forward, backward.head_backward, module, rng.standard_normal((B, C)), params,
                rng, module)


def test_softmax_cross_entropy(rng):
    logits = 4 * rng.standard_normal((8, 10))
    labels = rng.integers(0, 10, 8)
    loss, cache = backward.softmax_cross_entropy_forward(logits, labels)
    logits_t = t(logits, grad=True)
    loss_t = F.cross_entropy(logits_t, torch.from_numpy(labels))
    loss_t.backward()
    assert abs(loss - loss_t.item()) <= 1e-12 * loss_t.item()
    assert_grad("dlogits", backward.softmax_cross_entropy_backward(cache), logits_t.grad)


SMALL = MixerConfig(patch_size=P, img_size=16, in_chans=3, embed_dim=C, depth=2, tokens_dim=T, channels_dim=H,
                    num_classes=10)


def timm_small(state):
    model = MlpMixer(num_classes=10, img_size=16, patch_size=P, num_blocks=2, embed_dim=C,
                     mlp_ratio=(T / C, H / C)).double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    return model


def test_whole_model_gradients_match_timm_autograd(rng):
    state = random_state_dict(SMALL, seed=1, dtype=np.float64)
    x, labels = rng.standard_normal((4, 3, 16, 16)), rng.integers(0, 10, 4)
    model = timm_small(state)
    xt = t(x, grad=True)
    loss_t = F.cross_entropy(model(xt), torch.from_numpy(labels))
    loss_t.backward()

    loss, logits, grads = backward.loss_and_grads(nest(state), x, labels, P)
    assert abs(loss - loss_t.item()) <= 1e-12 * loss_t.item()
    assert logits.std() > 0.1  # random weights, real spread
    flat = flatten(grads)
    assert sorted(flat) == sorted(state)  # a gradient for every weight, under timm's key
    scale = max(np.abs(p.grad.numpy()).max() for p in model.parameters())
    for key, p in model.named_parameters():
        if key.endswith("mlp_tokens.fc2.bias"):
            # Exactly zero in exact arithmetic: this bias adds the same number to all C channels of a
            # token, which the next LayerNorm (over channels) subtracts again. Both sides are rounding noise.
            assert np.abs(flat[key]).max() < 1e-12 * scale and np.abs(p.grad.numpy()).max() < 1e-12 * scale
            continue
        assert_grad(key, flat[key], p.grad)
    dx, _ = backward.backward(backward.softmax_cross_entropy_backward(
        backward.softmax_cross_entropy_forward(logits, labels)[1]), backward.forward_with_cache(x, nest(state), P)[1])
    assert_grad("dimage", dx, xt.grad)


def test_forward_with_cache_is_layers_forward_and_float32_stays_float32(rng):
    state = random_state_dict(SMALL, seed=2)  # float32
    params = nest(state)
    x = rng.standard_normal((2, 3, 16, 16)).astype(np.float32)
    logits, cache = backward.forward_with_cache(x, params, P)
    assert np.array_equal(logits, layers.forward(x, params, P))  # the same functions, the same bits
    loss, _, grads = backward.loss_and_grads(params, x, np.array([3, 7]), P)
    assert loss.dtype == np.float32
    for key, g in flatten(grads).items():
        assert g.dtype == np.float32, f"{key}: gradient upcast to {g.dtype}"
        assert g.shape == state[key].shape
