"""The stubs: copy one, fill in its body, then check it: check("layer_norm", my_layer_norm).

Each raises NotImplementedError until you replace it; the statement of each exercise is its
docstring (help(layer_norm_stub)) or statement("layer_norm"). Shapes: see numpy_mixer/layers.py.
"""


def _todo(name):
    return NotImplementedError(f"{name}_stub: write your own {name}, then check({name!r}, your_function)")


def patchify_stub(x, patch_size=16):
    # [B, 3, H, W] -> [B, N, 3*P*P]
    raise _todo("patchify")


def stem_stub(x, proj, patch_size=16):
    # [B, 3, H, W] -> [B, N, C]; proj = {"weight": [C, 3, P, P], "bias": [C]}
    raise _todo("stem")


def layer_norm_stub(x, weight, bias, eps=1e-6):
    # [..., C] -> [..., C]
    raise _todo("layer_norm")


def erf_stub(x):
    # [...] -> [...], elementwise
    raise _todo("erf")


def gelu_stub(x):
    # [...] -> [...], elementwise
    raise _todo("gelu")


def linear_stub(x, weight, bias):
    # [..., in] -> [..., out]; weight [out, in], bias [out]
    raise _todo("linear")


def mlp_stub(x, fc1, fc2):
    # [..., D] -> [..., hidden] -> [..., D]; fc1, fc2 = {"weight": ..., "bias": ...}
    raise _todo("mlp")


def token_mixing_stub(x, norm1, mlp_tokens):
    # [B, N, C] -> [B, N, C]
    raise _todo("token_mixing")


def channel_mixing_stub(x, norm2, mlp_channels):
    # [B, N, C] -> [B, N, C]
    raise _todo("channel_mixing")


def mixer_block_stub(x, norm1, mlp_tokens, norm2, mlp_channels):
    # [B, N, C] -> [B, N, C]
    raise _todo("mixer_block")


def global_pool_stub(x):
    # [B, N, C] -> [B, C]
    raise _todo("global_pool")


def forward_stub(x, params, patch_size=16):
    # [B, 3, H, W] -> [B, K]
    raise _todo("forward")


def preprocess_stub(img):
    # [H, W, 3] uint8 -> [3, 224, 224] float32
    raise _todo("preprocess")


def cost_stub(config):
    # config: {"img_size", "patch_size", "in_chans", "embed_dim", "depth", "tokens_dim", "channels_dim", "num_classes"}
    # -> {"block_params": int, "block_macs": int, "params": int, "macs": int}
    raise _todo("cost")


def linear_backward_stub(dout, x, weight, bias):
    # dout [..., out], x [..., in] -> (dx [..., in], {"weight": [out, in], "bias": [out]})
    raise _todo("linear_backward")


def layer_norm_backward_stub(dout, x, weight, bias, eps=1e-6):
    # dout, x [..., C] -> (dx [..., C], {"weight": [C], "bias": [C]})
    raise _todo("layer_norm_backward")


def gelu_backward_stub(dout, x):
    # dout, x [...] -> dx [...]
    raise _todo("gelu_backward")


def softmax_cross_entropy_backward_stub(logits, labels):
    # logits [B, K], labels [B] int -> dlogits [B, K]
    raise _todo("softmax_cross_entropy_backward")


def token_mixing_backward_stub(dout, x, norm1, mlp_tokens):
    # dout, x [B, N, C] -> (dx [B, N, C], {"norm1": {...}, "mlp_tokens": {"fc1": {...}, "fc2": {...}}})
    raise _todo("token_mixing_backward")


def channel_mixing_backward_stub(dout, x, norm2, mlp_channels):
    # dout, x [B, N, C] -> (dx [B, N, C], {"norm2": {...}, "mlp_channels": {"fc1": {...}, "fc2": {...}}})
    raise _todo("channel_mixing_backward")


def mixer_block_backward_stub(dout, x, norm1, mlp_tokens, norm2, mlp_channels):
    # dout, x [B, N, C] -> (dx [B, N, C], {"norm1", "mlp_tokens", "norm2", "mlp_channels": ...})
    raise _todo("mixer_block_backward")


def global_pool_head_backward_stub(dout, x, weight, bias):
    # dout [B, K], x [B, N, C] -> (dx [B, N, C], {"weight": [K, C], "bias": [K]})
    raise _todo("global_pool_head_backward")
