"""Models by the names timm uses, and timm's config.json, both ways.

    load_model("hf-hub:owner/repo")         # the Hugging Face hub (its cache, HF_HOME, HF_HUB_OFFLINE apply)
    load_model("hf-hub:owner/repo@v1.0")    # a branch, tag or commit
    load_model("local-dir:/path/to/folder") # a folder with config.json and model.safetensors
    load_model("/path/to/folder")           # the same
    model.save_pretrained("folder")         # the folder timm.models.save_for_hf writes

config.json is read as timm's _parse_model_cfg reads it (timm/models/_hub.py): the architecture,
num_classes, label_names and pretrained_cfg (mean, std, interpolation, crop_pct, crop_mode, input_size),
or the legacy layout where all of these sit in one dict. Every download goes through huggingface_hub's
hf_hub_download, as in timm; without a network it fails in seconds instead of retrying for 25.
"""
import json
import math
import os
import socket
import threading
import time

from .errors import MixerError, first_line
from .weights import ARCHITECTURES, MixerConfig

HUB_PREFIXES = ("hf-hub:", "hf_hub:")  # timm accepts both spellings
LOCAL_PREFIX = "local-dir:"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
# save_pretrained names a Mixer whose shape is none of timm's registered ones so (timm cannot build it by
# name: its factories fix patch_size, num_blocks and embed_dim; timm.models.MlpMixer(**model_args) can)
CUSTOM_ARCHITECTURE = "mixer_custom"
_PICKLED = ("pytorch_model.bin", "pytorch_model.pth", "model.pth")
PROBE_TIMEOUT_S = 3.0

_OFFLINE_WAY = "or set HF_HUB_OFFLINE=1 with the model already in the Hugging Face cache (HF_HOME), "
_WAYS_FORWARD = ("pass a local checkpoint with --weights FILE (load_model('path/to/model.safetensors')), "
                 + _OFFLINE_WAY + "or use --model digits (shipped in the package, no download)")


# --- names ------------------------------------------------------------------------------------------------


def split_revision(repo_id):
    """'owner/repo@rev' -> ('owner/repo', 'rev'), as timm's hf_split; no '@' -> revision None."""
    repo, at, revision = repo_id.partition("@")
    if "@" in revision or (at and not revision) or not repo:
        raise MixerError(f"hf-hub:{repo_id}: expected hf-hub:owner/repo or hf-hub:owner/repo@revision")
    return repo, revision or None


def is_hub_name(text):
    return text.startswith(HUB_PREFIXES)


def is_local_name(text):
    return text.startswith(LOCAL_PREFIX)


# --- the network --------------------------------------------------------------------------------------------


_PROBES = {}  # (host, port) -> (time.monotonic() of the probe, answered): one probe per model load, not per file
PROBE_MEMORY_S = 60.0


def hub_reachable(timeout=PROBE_TIMEOUT_S):
    """False when HF_HUB_OFFLINE is set or the hub's host does not answer within `timeout` seconds.

    huggingface_hub retries for ~25 s when there is no network; this probe answers in at most `timeout`
    (the name lookup too, which a socket timeout does not bound, so it runs in a thread). The answer is
    kept for PROBE_MEMORY_S, so config.json and the weights do not cost a probe each.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # behind a proxy a direct probe says nothing: let huggingface_hub try
    url = urlsplit(constants.ENDPOINT)  # huggingface.co, or the mirror HF_ENDPOINT names
    address = (url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443))
    when, answer = _PROBES.get(address, (-math.inf, None))
    if time.monotonic() - when < PROBE_MEMORY_S:
        return answer
    _PROBES[address] = (time.monotonic(), _probe(address, timeout))
    return _PROBES[address][1]


def _probe(address, timeout):
    answered = []

    def probe():
        try:
            with socket.create_connection(address, timeout=timeout):
                answered.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answered)


def hub_file(repo, filename, revision=None):
    """Local path of `filename` in the hub repo `repo`, through huggingface_hub (cache, HF_HOME, HF_HUB_OFFLINE).

    With a network this is hf_hub_download as timm calls it (with its progress bar). Without one
    (HF_HUB_OFFLINE, or the hub does not answer the probe) only the cache is read: a missing file is a
    MixerError within seconds that says what to do.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    where = f"{repo}" + (f"@{revision}" if revision else "") + f" ({filename})"
    online = hub_reachable()
    try:
        return hf_hub_download(repo, filename, revision=revision, local_files_only=not online)
    except LocalEntryNotFoundError:
        why = ("HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE
               else f"no network ({constants.ENDPOINT} does not answer)" if not online
               else f"{constants.ENDPOINT} could not be reached")
        ways = _WAYS_FORWARD if not constants.HF_HUB_OFFLINE else _WAYS_FORWARD.replace(_OFFLINE_WAY, "")
        raise MixerError(f"cannot download {where}: {why} and it is not in the Hugging Face cache "
                         f"({constants.HF_HUB_CACHE}); {ways}") from None
    except RepositoryNotFoundError:
        raise MixerError(f"{repo}: no such repository on the Hugging Face hub (or it is private: "
                         "log in with `hf auth login`)") from None
    except RevisionNotFoundError:
        raise MixerError(f"{repo}: no revision {revision!r} (a branch, tag or commit of the repository)") from None
    except EntryNotFoundError:
        raise MixerError(f"{repo}: the repository has no {filename}"
                         + (" (numpy-mixer reads only safetensors weights, never pickled .bin/.pth files)"
                            if filename == WEIGHTS_NAME else "")) from None
    except (HfHubHTTPError, OSError) as e:
        raise MixerError(f"cannot download {where}: {first_line(e)}; {_WAYS_FORWARD}") from None


def cached_hub_file(repo, filename, revision=None):
    """The file's path in the Hugging Face cache, or None (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    path = try_to_load_from_cache(repo, filename, revision=revision)
    return path if isinstance(path, str) else None


# --- timm's config.json ---------------------------------------------------------------------------------------


def read_config_file(path, source):
    """The JSON object in a config.json, or a MixerError naming the file."""
    try:
        with open(path, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MixerError(f"{source}: cannot read {path} ({e})") from None
    if not isinstance(cfg, dict):
        raise MixerError(f"{source}: {path} is not a JSON object, so not timm's config.json")
    return cfg


def parse_config(cfg, source):
    """timm's config.json (dict) -> numpy-mixer's pretrained_cfg, as timm's _parse_model_cfg reads it.

    The result has name, architecture, num_classes, labels (a list, from label_names, or None), mean, std,
    interpolation, crop_pct, crop_mode, input_size, model_args. A non-Mixer architecture is a MixerError.
    """
    cfg = json.loads(json.dumps(cfg))  # a deep copy: the caller's dict stays as it was
    if "pretrained_cfg" not in cfg:  # legacy single dict -> split, as timm does
        if "architecture" not in cfg:
            raise MixerError(f"{source}: config.json has no 'architecture'; is this a timm model?")
        pretrained_cfg = cfg
        cfg = {"architecture": pretrained_cfg.pop("architecture"),
               "num_features": pretrained_cfg.pop("num_features", None), "pretrained_cfg": pretrained_cfg}
        if "labels" in pretrained_cfg:
            pretrained_cfg["label_names"] = pretrained_cfg.pop("labels")
    pretrained_cfg = cfg["pretrained_cfg"]
    if not isinstance(pretrained_cfg, dict):
        raise MixerError(f"{source}: config.json's 'pretrained_cfg' is not a JSON object")
    if "num_classes" in cfg:  # top-level values override, as in timm
        pretrained_cfg["num_classes"] = cfg["num_classes"]
    if "label_names" in cfg:
        pretrained_cfg["label_names"] = cfg["label_names"]
    model_args = cfg.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise MixerError(f"{source}: config.json's 'model_args' is not a JSON object")
    if model_args.get("in_chans") is not None:
        pretrained_cfg["input_size"] = (model_args["in_chans"], *pretrained_cfg.get("input_size", (3, 224, 224))[1:])
    if model_args.get("img_size") is not None and pretrained_cfg.get("fixed_input_size", False):
        size = model_args["img_size"]
        size = (size, size) if isinstance(size, int) else tuple(size)
        pretrained_cfg["input_size"] = (pretrained_cfg.get("input_size", (3,))[0], *size)

    architecture = cfg.get("architecture")
    arch = str(architecture).split(".")[0]
    if arch not in ARCHITECTURES and arch != CUSTOM_ARCHITECTURE:
        raise MixerError(f"{source}: config.json says architecture {architecture!r}, which is not an MLP-Mixer; "
                         f"numpy-mixer runs timm's {', '.join(ARCHITECTURES)}")
    global_pool = model_args.get("global_pool", cfg.get("global_pool", "avg"))
    if global_pool != "avg" or model_args.get("stem_norm"):
        raise MixerError(f"{source}: config.json has global_pool={global_pool!r}, stem_norm="
                         f"{model_args.get('stem_norm', False)}; numpy-mixer runs timm's default Mixer "
                         "(global_pool='avg', no stem norm) only")
    crop_mode = pretrained_cfg.get("crop_mode", "center")
    if crop_mode != "center":
        raise MixerError(f"{source}: crop_mode {crop_mode!r} in config.json; numpy-mixer's preprocessing "
                         "does timm's 'center' crop only")
    from .preprocess import check_preprocessing

    checked = check_preprocessing({k: pretrained_cfg[k] for k in ("mean", "std", "interpolation", "crop_pct")
                                   if k in pretrained_cfg}, f"{source}: config.json")
    mean, std, interpolation, crop_pct = (checked[k] for k in ("mean", "std", "interpolation", "crop_pct"))
    num_classes = pretrained_cfg.get("num_classes")
    if num_classes is not None and (not isinstance(num_classes, int) or isinstance(num_classes, bool)
                                    or num_classes < 0):
        raise MixerError(f"{source}: num_classes {num_classes!r} in config.json; expected a whole number >= 0")
    input_size = pretrained_cfg.get("input_size", (3, 224, 224))
    if (not isinstance(input_size, (list, tuple)) or len(input_size) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in input_size)):
        raise MixerError(f"{source}: input_size {input_size!r} in config.json; expected [channels, height, width]")
    parsed = dict(name=source, architecture=architecture, num_classes=num_classes,
                labels=_label_list(pretrained_cfg.get("label_names"), num_classes, source),
                mean=tuple(mean), std=tuple(std), interpolation=interpolation, crop_pct=crop_pct,
                crop_mode=crop_mode, input_size=tuple(input_size),
                model_args=model_args)
    return {k: v for k, v in parsed.items() if v is not None}  # absent: the weights or the defaults decide


def _label_list(label_names, num_classes, source):
    """timm's label_names (a list, or {index: name} where there are gaps) -> a list, one name per class."""
    if label_names is None:
        return None
    if isinstance(label_names, dict):
        try:
            by_index = {int(k): str(v) for k, v in label_names.items()}
        except ValueError:
            raise MixerError(f"{source}: label_names in config.json has a key that is not a class index") from None
        count = num_classes or (max(by_index) + 1 if by_index else 0)
        return [by_index.get(i, f"class {i}") for i in range(count)]
    if not isinstance(label_names, (list, tuple)):
        raise MixerError(f"{source}: label_names in config.json is a {type(label_names).__name__}, "
                         "expected a list (or {index: name})")
    return [str(n) for n in label_names]


def check_config(config, pretrained_cfg, source):
    """The weights (a MixerConfig read off their shapes) must be what config.json says they are."""
    arch = str(pretrained_cfg.get("architecture", "")).split(".")[0]
    if arch in ARCHITECTURES:
        want = ARCHITECTURES[arch]
        if (config.patch_size, config.depth, config.embed_dim) != (want.patch_size, want.depth, want.embed_dim):
            raise MixerError(f"{source}: config.json says {arch} (patch {want.patch_size}, {want.depth} blocks, "
                             f"width {want.embed_dim}) but the weights have patch {config.patch_size}, "
                             f"{config.depth} blocks, width {config.embed_dim}")
    num_classes = pretrained_cfg.get("num_classes")
    if num_classes is not None and num_classes != config.num_classes:
        raise MixerError(f"{source}: config.json says num_classes={num_classes} but the head has "
                         f"{config.num_classes} outputs")
    labels = pretrained_cfg.get("labels")
    if isinstance(labels, list) and len(labels) != config.num_classes:
        raise MixerError(f"{source}: config.json has {len(labels)} label_names for {config.num_classes} classes")
    size = tuple(pretrained_cfg.get("input_size") or ())
    if size and size != (config.in_chans, config.img_size, config.img_size):
        raise MixerError(f"{source}: config.json says input_size {list(size)} but the weights take "
                         f"{[config.in_chans, config.img_size, config.img_size]}")


# --- where the files are ---------------------------------------------------------------------------------------


def resolve_folder(folder, source=None):
    """A folder with config.json and safetensors weights -> (weights file, pretrained_cfg)."""
    folder = os.fspath(folder)
    source = source or f"local-dir:{folder}"
    if not os.path.isdir(folder):
        raise MixerError(f"{source}: no such folder")
    config_path = os.path.join(folder, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise MixerError(f"{source}: no {CONFIG_NAME} in the folder (timm's local-dir: layout: config.json and "
                         "model.safetensors); pass the .safetensors file itself to use Google's preprocessing")
    cfg = parse_config(read_config_file(config_path, source), source)
    return _weights_in(folder, source), cfg


def _weights_in(folder, source):
    """model.safetensors, else the first *.safetensors (timm's order); pickled weights are refused."""
    if os.path.isfile(os.path.join(folder, WEIGHTS_NAME)):
        return os.path.join(folder, WEIGHTS_NAME)
    names = sorted(os.listdir(folder))
    safetensors = [n for n in names if n.endswith(".safetensors")]
    if safetensors:
        return os.path.join(folder, safetensors[0])
    pickled = [n for n in names if n in _PICKLED or n.endswith((".bin", ".pth", ".pt"))]
    if pickled:
        raise MixerError(f"{source}: only pickled weights ({pickled[0]}); numpy-mixer never unpickles (it can run "
                         "arbitrary code): convert them to model.safetensors, e.g. with safetensors.torch.save_file")
    raise MixerError(f"{source}: no {WEIGHTS_NAME} in the folder")


def resolve_hub(repo_id):
    """'owner/repo[@rev]' -> (weights file, pretrained_cfg), both through the Hugging Face cache."""
    repo, revision = split_revision(repo_id)
    source = f"hf-hub:{repo_id}"
    cfg = parse_config(read_config_file(hub_file(repo, CONFIG_NAME, revision), source), source)
    return hub_file(repo, WEIGHTS_NAME, revision), cfg


def cached_timm_config(tag):
    """The pretrained_cfg in timm/<tag>'s config.json if the Hugging Face cache has it, else None."""
    path = cached_hub_file(f"timm/{tag}", CONFIG_NAME)
    if path is None:
        return None
    return parse_config(read_config_file(path, tag), tag)


# --- the other way: save for timm --------------------------------------------------------------------------------


def timm_architecture(config):
    """timm's name for a MixerConfig's shape, or CUSTOM_ARCHITECTURE when timm has none."""
    for name, arch in ARCHITECTURES.items():
        if (config.patch_size, config.depth, config.embed_dim, config.tokens_dim, config.channels_dim) == (
                arch.patch_size, arch.depth, arch.embed_dim, arch.tokens_dim, arch.channels_dim):
            return name
    return CUSTOM_ARCHITECTURE


def timm_config(config: MixerConfig, pretrained_cfg):
    """config.json's content for a model, in the layout timm.models.save_for_hf writes."""
    architecture = timm_architecture(config)
    size = [config.img_size, config.img_size]
    model_args = {"num_classes": config.num_classes, "in_chans": config.in_chans, "global_pool": "avg",
                  "img_size": size}
    if architecture == CUSTOM_ARCHITECTURE:  # everything timm.models.MlpMixer(**model_args) needs
        model_args.update(patch_size=config.patch_size, num_blocks=config.depth, embed_dim=config.embed_dim,
                          mlp_ratio=[config.tokens_dim / config.embed_dim, config.channels_dim / config.embed_dim])
    out = {"architecture": architecture, "num_classes": config.num_classes, "num_features": config.embed_dim,
           "global_pool": "avg"}
    labels = pretrained_cfg.get("labels")
    if isinstance(labels, (list, tuple)):  # a named label set (imagenet-1k ...) is timm's default: not written
        out["label_names"] = [str(n) for n in labels]
    out["model_args"] = model_args
    out["pretrained_cfg"] = {
        "tag": "numpy_mixer", "custom_load": False, "input_size": [config.in_chans, *size], "fixed_input_size": True,
        "interpolation": pretrained_cfg["interpolation"], "crop_pct": float(pretrained_cfg["crop_pct"]),
        "crop_mode": "center", "mean": [float(v) for v in pretrained_cfg["mean"]],
        "std": [float(v) for v in pretrained_cfg["std"]], "num_classes": config.num_classes, "pool_size": None,
        "first_conv": "stem.proj", "classifier": "head"}
    return out
