"""The answers, computed by timm and torch: one function per exercise, NumPy in, NumPy out.

Each takes the same arguments as the exercise (weights in PyTorch's layout, nested dicts keyed
as timm's state dict) and runs timm's own module on them. tools/make_exercise_fixtures.py saves
what they return as the golden fixtures; check(..., live=True) calls them directly.
Only this module imports torch and timm, and only when one of its functions is called.
"""
import inspect

import numpy as np


def _torch():
    import timm  # noqa: F401  (imported here so that a learner without torch can still check)
    import torch
    return torch


def _tensor(a):
    return _torch().from_numpy(np.ascontiguousarray(a))


def _numpy(t):
    return t.detach().cpu().numpy()


def _load(module, params, prefix=""):
    """Load nested NumPy params into a torch module, strictly (every key, every shape)."""
    from ..model import flatten
    flat = flatten(params, prefix) if params else {}
    module.load_state_dict({k: _tensor(v) for k, v in flat.items()}, strict=True)
    return module.eval()


def _mixer_defaults():
    """timm's own choice of norm and activation for MlpMixer: LayerNorm(eps=1e-6) and nn.GELU."""
    from timm.models.mlp_mixer import MlpMixer
    parameters = inspect.signature(MlpMixer).parameters
    return parameters["norm_layer"].default, parameters["act_layer"].default


def _mixer_block(dim, seq_len, tokens_dim, channels_dim):
    from timm.models.mlp_mixer import MixerBlock
    norm_layer, act_layer = _mixer_defaults()
    block = MixerBlock(dim, seq_len, mlp_ratio=(tokens_dim / dim, channels_dim / dim), norm_layer=norm_layer,
                       act_layer=act_layer)
    assert block.mlp_tokens.fc1.out_features == tokens_dim and block.mlp_channels.fc1.out_features == channels_dim
    return block


def _no_grad(f):
    def wrapped(*args, **kwargs):
        with _torch().no_grad():
            return f(*args, **kwargs)
    wrapped.__name__, wrapped.__doc__ = f.__name__, f.__doc__
    return wrapped


@_no_grad
def patchify(x, patch_size=16):
    """torch's unfold: P x P tiles, each flattened as the conv kernel is stored, (c, h, w)."""
    torch = _torch()
    cols = torch.nn.functional.unfold(_tensor(x), kernel_size=patch_size, stride=patch_size)  # [B, 3*P*P, N]
    return _numpy(cols.transpose(1, 2))


@_no_grad
def stem(x, proj, patch_size=16):
    """timm's PatchEmbed (MlpMixer.stem): the stride-P conv, flattened to tokens."""
    from timm.layers import PatchEmbed
    C, in_chans = proj["weight"].shape[:2]
    module = PatchEmbed(img_size=tuple(x.shape[-2:]), patch_size=patch_size, in_chans=in_chans, embed_dim=C)
    return _numpy(_load(module, {"proj": proj})(_tensor(x)))


@_no_grad
def layer_norm(x, weight, bias, eps=1e-6):
    """timm's MlpMixer norm_layer (eps from timm, not from the arguments)."""
    norm_layer, _ = _mixer_defaults()
    module = _load(norm_layer(x.shape[-1]), {"weight": weight, "bias": bias})
    return _numpy(module(_tensor(x)))


@_no_grad
def erf(x):
    return _numpy(_torch().erf(_tensor(x)))


@_no_grad
def gelu(x):
    """timm's MlpMixer act_layer (nn.GELU, exact erf form)."""
    _, act_layer = _mixer_defaults()
    return _numpy(act_layer()(_tensor(x)))


@_no_grad
def linear(x, weight, bias):
    torch = _torch()
    module = _load(torch.nn.Linear(weight.shape[1], weight.shape[0]), {"weight": weight, "bias": bias})
    return _numpy(module(_tensor(x)))


@_no_grad
def mlp(x, fc1, fc2):
    """timm's Mlp with MlpMixer's activation."""
    from timm.layers import Mlp
    _, act_layer = _mixer_defaults()
    module = Mlp(fc1["weight"].shape[1], fc1["weight"].shape[0], fc2["weight"].shape[0], act_layer=act_layer)
    return _numpy(_load(module, {"fc1": fc1, "fc2": fc2})(_tensor(x)))


def _block_for(x, mlp_tokens=None, mlp_channels=None):
    B, N, C = x.shape
    T = mlp_tokens["fc1"]["weight"].shape[0] if mlp_tokens else N
    H = mlp_channels["fc1"]["weight"].shape[0] if mlp_channels else C
    return _mixer_block(C, N, T, H)


@_no_grad
def token_mixing(x, norm1, mlp_tokens):
    """The first line of timm's MixerBlock.forward, on its own submodules."""
    block = _block_for(x, mlp_tokens=mlp_tokens)
    _load(block.norm1, norm1), _load(block.mlp_tokens, mlp_tokens)
    t = _tensor(x)
    return _numpy(t + block.mlp_tokens(block.norm1(t).transpose(1, 2)).transpose(1, 2))


@_no_grad
def channel_mixing(x, norm2, mlp_channels):
    """The second line of timm's MixerBlock.forward, on its own submodules."""
    block = _block_for(x, mlp_channels=mlp_channels)
    _load(block.norm2, norm2), _load(block.mlp_channels, mlp_channels)
    t = _tensor(x)
    return _numpy(t + block.mlp_channels(block.norm2(t)))


@_no_grad
def mixer_block(x, norm1, mlp_tokens, norm2, mlp_channels):
    """timm's MixerBlock."""
    block = _block_for(x, mlp_tokens, mlp_channels)
    params = dict(norm1=norm1, mlp_tokens=mlp_tokens, norm2=norm2, mlp_channels=mlp_channels)
    return _numpy(_load(block, params)(_tensor(x)))


def _mlp_mixer(params, img_size, patch_size):
    from timm.models.mlp_mixer import MlpMixer
    C = params["stem"]["proj"]["weight"].shape[0]
    T, H = (params["blocks"][0][k]["fc1"]["weight"].shape[0] for k in ("mlp_tokens", "mlp_channels"))
    K = params["head"]["weight"].shape[0] if "head" in params else 0
    model = MlpMixer(num_classes=K, img_size=img_size, patch_size=patch_size, num_blocks=len(params["blocks"]),
                     embed_dim=C, mlp_ratio=(T / C, H / C))
    return _load(model, params)


@_no_grad
def global_pool(x):
    """timm's MlpMixer.forward_head(pre_logits=True) (global_pool='avg')."""
    from timm.models.mlp_mixer import MlpMixer
    B, N, C = x.shape
    G = int(round(N ** 0.5))
    model = MlpMixer(num_classes=0, img_size=G, patch_size=1, num_blocks=1, embed_dim=C).eval()
    return _numpy(model.forward_head(_tensor(x), pre_logits=True))


@_no_grad
def forward(x, params, patch_size=16):
    """timm's MlpMixer built for these weights' shapes, loaded strictly."""
    return _numpy(_mlp_mixer(params, x.shape[-1], patch_size)(_tensor(x)))


def eval_transform(model_name="mixer_b16_224.goog_in21k_ft_in1k"):
    """timm's eval transform for a pretrained tag, from its pretrained_cfg (no weights needed)."""
    import timm
    from timm.data import create_transform, resolve_data_config
    cfg = timm.get_pretrained_cfg(model_name).to_dict()
    return create_transform(**resolve_data_config({}, pretrained_cfg=cfg), is_training=False)


@_no_grad
def preprocess(img):
    """timm's eval transform (Resize 256 bicubic, CenterCrop 224, ToTensor, Normalize 0.5) on a PIL image."""
    from PIL import Image
    return _numpy(eval_transform()(Image.fromarray(img)))


# --- backward: torch autograd on timm's modules, in the inputs' dtype (float64 or float32) ----------------

def _load_as(module, params, dtype):
    """A timm/torch module in `dtype` (float64 for the tight gradient checks), loaded strictly."""
    torch = _torch()
    return _load(module.to({np.dtype(np.float64): torch.float64, np.dtype(np.float32): torch.float32}[dtype]), params)


def _grads_of(module):
    """{name: grad} of a module's parameters, nested as timm's keys."""
    from ..model import nest
    return nest({k: _numpy(p.grad) for k, p in module.named_parameters()})


def _autograd(run, x, dout):
    """x as a leaf that wants its gradient; run(t) -> output; backward with dout. -> dx"""
    t = _tensor(x).requires_grad_(True)
    run(t).backward(_tensor(dout))
    return _numpy(t.grad)


def linear_backward(dout, x, weight, bias):
    module = _load_as(_torch().nn.Linear(weight.shape[1], weight.shape[0]), {"weight": weight, "bias": bias}, x.dtype)
    dx = _autograd(module, x, dout)
    return dx, _grads_of(module)


def layer_norm_backward(dout, x, weight, bias, eps=1e-6):
    norm_layer, _ = _mixer_defaults()
    module = _load_as(norm_layer(x.shape[-1]), {"weight": weight, "bias": bias}, x.dtype)
    dx = _autograd(module, x, dout)
    return dx, _grads_of(module)


def gelu_backward(dout, x):
    _, act_layer = _mixer_defaults()
    return _autograd(act_layer(), x, dout)


def softmax_cross_entropy_backward(logits, labels):
    """The gradient of torch.nn.functional.cross_entropy (mean over the batch) for the logits."""
    torch = _torch()
    t = _tensor(logits).requires_grad_(True)
    torch.nn.functional.cross_entropy(t, _tensor(labels)).backward()
    return _numpy(t.grad)


def token_mixing_backward(dout, x, norm1, mlp_tokens):
    block = _block_for(x, mlp_tokens=mlp_tokens).to(_tensor(x).dtype)
    _load(block.norm1, norm1), _load(block.mlp_tokens, mlp_tokens)
    dx = _autograd(lambda t: t + block.mlp_tokens(block.norm1(t).transpose(1, 2)).transpose(1, 2), x, dout)
    return dx, {"norm1": _grads_of(block.norm1), "mlp_tokens": _grads_of(block.mlp_tokens)}


def channel_mixing_backward(dout, x, norm2, mlp_channels):
    block = _block_for(x, mlp_channels=mlp_channels).to(_tensor(x).dtype)
    _load(block.norm2, norm2), _load(block.mlp_channels, mlp_channels)
    dx = _autograd(lambda t: t + block.mlp_channels(block.norm2(t)), x, dout)
    return dx, {"norm2": _grads_of(block.norm2), "mlp_channels": _grads_of(block.mlp_channels)}


def mixer_block_backward(dout, x, norm1, mlp_tokens, norm2, mlp_channels):
    block = _block_for(x, mlp_tokens, mlp_channels)
    _load_as(block, dict(norm1=norm1, mlp_tokens=mlp_tokens, norm2=norm2, mlp_channels=mlp_channels), x.dtype)
    dx = _autograd(block, x, dout)
    return dx, _grads_of(block)


def global_pool_head_backward(dout, x, weight, bias):
    """timm's MlpMixer.forward_head (global_pool='avg', then the head), backward."""
    from timm.models.mlp_mixer import MlpMixer
    B, N, C = x.shape
    G = int(round(N ** 0.5))
    model = MlpMixer(num_classes=weight.shape[0], img_size=G, patch_size=1, num_blocks=1, embed_dim=C)
    head = _load_as(model.head, {"weight": weight, "bias": bias}, x.dtype)
    dx = _autograd(model.forward_head, x, dout)
    return dx, _grads_of(head)


# --- cost: parameters and multiply-adds, counted on timm's own model -------------------------------------

def cost(config):
    """Parameters (timm's numel) and multiply-adds (torch's FlopCounterMode / 2: the matmuls and the conv) of one
    MixerBlock and of the whole MlpMixer for a config dict (img_size, patch_size, in_chans, embed_dim, depth,
    tokens_dim, channels_dim, num_classes), for one image."""
    torch = _torch()
    from timm.models.mlp_mixer import MlpMixer
    from torch.utils.flop_counter import FlopCounterMode
    c = config
    C = c["embed_dim"]
    model = MlpMixer(num_classes=c["num_classes"], img_size=c["img_size"], in_chans=c["in_chans"],
                     patch_size=c["patch_size"], num_blocks=c["depth"], embed_dim=C,
                     mlp_ratio=(c["tokens_dim"] / C, c["channels_dim"] / C)).eval()
    block = model.blocks[0]
    assert block.mlp_tokens.fc1.out_features == c["tokens_dim"], "tokens_dim is not a whole ratio of embed_dim"
    N = (c["img_size"] // c["patch_size"]) ** 2

    def macs(module, x):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(x)
        flops = counter.get_total_flops()
        assert flops % 2 == 0
        return flops // 2

    image = torch.zeros(1, c["in_chans"], c["img_size"], c["img_size"])
    return {"block_params": sum(p.numel() for p in block.parameters()),
            "block_macs": macs(block, torch.zeros(1, N, C)),
            "params": sum(p.numel() for p in model.parameters()),
            "macs": macs(model, image)}
