"""Each readable layer against its torch / timm counterpart, on seeded random inputs."""
import math

import numpy as np
import pytest
import torch
from timm.layers import Mlp, PatchEmbed
from timm.models.mlp_mixer import MixerBlock

from numpy_mixer import layers
from numpy_mixer.checkpoint import config_for, random_tensor
from numpy_mixer.model import nest
from numpy_mixer.weights import expected_shapes

# tolerances relative to the largest output: float32 sums of hundreds of terms in another order
DTYPES = [(np.float32, torch.float32, 1e-5), (np.float64, torch.float64, 1e-12)]


def t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def randomise(module, rng, dtype):
    """Fill every parameter with realistic random values (timm zero-initialises some)."""
    for name, p in module.named_parameters():
        p.data = torch.from_numpy(random_tensor(name, p.shape, rng).astype(dtype))
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def assert_close(ours, theirs, dtype, rtol):
    theirs = theirs.detach().numpy() if isinstance(theirs, torch.Tensor) else theirs
    assert ours.dtype == dtype, f"got {ours.dtype}, expected {np.dtype(dtype)}"
    assert ours.shape == theirs.shape
    scale = np.abs(theirs).max()
    assert scale > 0.1 and theirs.std() > 0.01, "reference output is degenerate: the test could not fail"
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=rtol * scale)


def test_erf_float32_within_1e7_of_math_erf():
    rng = np.random.default_rng(0)
    x = np.concatenate([
        np.linspace(-6, 6, 400_001, dtype=np.float32),  # dense, both branches and the switch at |x| = 1
        rng.standard_normal(200_000).astype(np.float32) * 2,
        np.nextafter(np.float32(1), np.float32([0, 2])),  # either side of the branch point
        np.float32([0.0, -0.0, 1e-30, 1e-45, 3.9, 4.0, 4.1, 10.0, 3e38]),
    ]).astype(np.float32)
    ours = layers.erf(x)
    assert ours.dtype == np.float32
    truth = np.array([math.erf(v) for v in x.astype(np.float64)])
    err = np.abs(ours.astype(np.float64) - truth)
    assert err.max() <= 1e-7, f"max abs error {err.max():.3g} at x={x[err.argmax()]}"


def test_erf_float64_is_accurate_to_float64():
    x = np.linspace(-7, 7, 200_001)
    truth = np.array([math.erf(v) for v in x])
    err = np.abs(layers.erf(x) - truth)
    assert layers.erf(x).dtype == np.float64
    assert err.max() <= 2e-15, f"max abs error {err.max():.3g} at x={x[err.argmax()]}"


def test_erf_special_values():
    x = np.float32([np.nan, np.inf, -np.inf, 0.0, -0.0])
    out = layers.erf(x)
    assert np.isnan(out[0]) and out[1] == 1 and out[2] == -1
    assert out[3] == 0 and np.signbit(out[4])
    with pytest.raises(TypeError, match="float32 or float64"):
        layers.erf(np.arange(3))


@pytest.mark.parametrize("np_dtype, torch_dtype, tol", DTYPES)
def test_gelu_is_torch_exact_gelu(np_dtype, torch_dtype, tol):
    x = (np.random.default_rng(1).standard_normal(100_000) * 3).astype(np_dtype)
    ours = layers.gelu(x)
    theirs = torch.nn.GELU()(t(x))
    assert_close(ours, theirs, np_dtype, tol / 10)  # elementwise: no long sums
    tanh = torch.nn.GELU(approximate="tanh")(t(x)).numpy()
    assert np.abs(ours - tanh).max() > 1e-4  # the tanh form is a different function, and we can tell


@pytest.mark.parametrize("np_dtype, torch_dtype, tol", DTYPES)
def test_layer_norm_is_torch_layer_norm_eps_1e6(np_dtype, torch_dtype, tol):
    rng = np.random.default_rng(2)
    ln = torch.nn.LayerNorm(768, eps=1e-6).to(torch_dtype)
    params = randomise(ln, rng, np_dtype)
    x = rng.standard_normal((2, 196, 768)).astype(np_dtype)
    assert_close(layers.layer_norm(x, **params), ln(t(x)), np_dtype, tol)
    # an offset and a small spread, where eps and the biased variance show: float32 rounding of
    # x - mean costs ~1e-5 here, so the tolerance is looser, yet 3x below either mistake
    x = (5 + 0.03 * rng.standard_normal((2, 196, 768))).astype(np_dtype)
    theirs = ln(t(x)).detach().numpy()
    assert_close(layers.layer_norm(x, **params), theirs, np_dtype, tol * 2)
    atol = tol * 2 * np.abs(theirs).max()
    centred = x - x.mean(-1, keepdims=True)
    for var, eps in [(x.var(-1, ddof=1, keepdims=True), 1e-6), (x.var(-1, keepdims=True), 1e-5)]:
        wrong = centred / np.sqrt(var + eps) * params["weight"] + params["bias"]
        assert np.abs(wrong - theirs).max() > 3 * atol


@pytest.mark.parametrize("np_dtype, torch_dtype, tol", DTYPES)
def test_linear_and_mlp_are_timm_mlp(np_dtype, torch_dtype, tol):
    rng = np.random.default_rng(3)
    mlp = Mlp(196, 384).to(torch_dtype).eval()
    params = nest(randomise(mlp, rng, np_dtype))
    x = rng.standard_normal((2, 768, 196)).astype(np_dtype)
    assert_close(layers.linear(x, **params["fc1"]), mlp.fc1(t(x)), np_dtype, tol)
    assert_close(layers.mlp(x, **params), mlp(t(x)), np_dtype, tol)


@pytest.mark.parametrize("np_dtype, torch_dtype, tol", DTYPES)
def test_stem_is_timm_patch_embed_conv(np_dtype, torch_dtype, tol):
    rng = np.random.default_rng(4)
    embed = PatchEmbed(img_size=224, patch_size=16, in_chans=3, embed_dim=768).to(torch_dtype).eval()
    params = nest(randomise(embed, rng, np_dtype))
    x = rng.standard_normal((2, 3, 224, 224)).astype(np_dtype)
    assert_close(layers.stem(x, patch_size=16, **params), embed(t(x)), np_dtype, tol)


@pytest.mark.parametrize("np_dtype, torch_dtype, tol", DTYPES)
def test_token_channel_mixing_and_block_are_timm_mixer_block(np_dtype, torch_dtype, tol):
    rng = np.random.default_rng(5)
    block = MixerBlock(768, 196).to(torch_dtype).eval()
    params = nest(randomise(block, rng, np_dtype))
    x = rng.standard_normal((2, 196, 768)).astype(np_dtype)
    with torch.no_grad():
        tx = t(x)
        after_tokens = tx + block.mlp_tokens(block.norm1(tx).transpose(1, 2)).transpose(1, 2)
        after_channels = after_tokens + block.mlp_channels(block.norm2(after_tokens))
        whole = block(tx)
    ours_tokens = layers.token_mixing(x, params["norm1"], params["mlp_tokens"])
    assert_close(ours_tokens, after_tokens, np_dtype, tol)
    assert_close(layers.channel_mixing(ours_tokens, params["norm2"], params["mlp_channels"]), after_channels,
                 np_dtype, tol)
    assert_close(layers.mixer_block(x, **params), whole, np_dtype, tol)
    np.testing.assert_array_equal(after_channels.numpy(), whole.numpy())  # our reading of timm's block is right


@pytest.mark.parametrize("np_dtype, torch_dtype, tol", DTYPES)
def test_pool_and_head(np_dtype, torch_dtype, tol):
    rng = np.random.default_rng(6)
    head = torch.nn.Linear(768, 1000).to(torch_dtype)
    params = randomise(head, rng, np_dtype)
    x = rng.standard_normal((2, 196, 768)).astype(np_dtype)
    pooled = layers.global_pool(x)
    assert_close(pooled, t(x).mean(dim=1), np_dtype, tol)
    assert_close(layers.head(pooled, **params), head(t(pooled)), np_dtype, tol)


def test_parameter_count_of_mixer_b16_is_59_880_472():
    shapes = expected_shapes(config_for("mixer_b16_224"))
    assert sum(int(np.prod(s)) for s in shapes.values()) == 59_880_472
