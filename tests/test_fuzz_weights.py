"""Fuzzing the weights reader: mutated safetensors files, read by us and by the safetensors library.

The property, for every file hypothesis makes from a valid tiny checkpoint (bytes flipped, cut or
added; header values, offsets, shapes, dtypes, keys and lengths changed):
    read_safetensors and load_model raise MixerError, or return exactly what safetensors reads:
    the same keys, shapes and values to the bit. Never another exception, never other numbers.
Refusing a file the library reads is allowed (we are stricter: duplicate keys, unknown fields,
NaN weights, non-Mixer keys); `event` counts how often each outcome happens (pytest --hypothesis-show-statistics).
Case counts scale with the hypothesis profile (tests/conftest.py).
"""
import json
import re
import struct

import numpy as np
import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st
from safetensors.torch import load as safetensors_load
from safetensors.torch import save as safetensors_save

from numpy_mixer import load_model
from numpy_mixer.checkpoint import config_for, random_state_dict
from numpy_mixer.errors import MixerError
from numpy_mixer.weights import read_safetensors

TINY = config_for("mixer_s32_224", patch_size=8, img_size=16, embed_dim=8, depth=1, tokens_dim=4, channels_dim=16,
                  num_classes=3)
TORCH_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
CRATE_DTYPES = ["BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "F64",
                "I64", "U64", "f32", "", "F4"]


def tiny_file(dtype="F32", seed=0):
    state = random_state_dict(TINY, seed=seed)
    return safetensors_save({k: torch.from_numpy(v).to(TORCH_DTYPES[dtype]) for k, v in state.items()},
                            metadata={"format": "pt"})


BASES = {dtype: tiny_file(dtype) for dtype in TORCH_DTYPES}


def well_formed(entry):
    """An entry the edits below can work on (earlier edits may have broken it)."""
    return (isinstance(entry, dict) and isinstance(entry.get("shape"), list)
            and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
            and all(type(v) is int for v in entry["data_offsets"]))


def split(content):
    (n,) = struct.unpack("<Q", content[:8])
    return json.loads(content[8:8 + n]), content[8 + n:]


def join(header_text, data, length_delta=0):
    raw = header_text.encode("utf-8", "surrogatepass")
    return struct.pack("<Q", max(0, len(raw) + length_delta)) + raw + data


# ---- mutations ----

NUMBERS = st.one_of(st.integers(0, 64), st.integers(-3, 2**64 + 3), st.sampled_from([2**32, 2**63, 2**64 - 1, 2**64]),
                    st.floats(allow_nan=True), st.text(max_size=3), st.none(), st.booleans())


@st.composite
def header_edits(draw, header, data):
    """A change to one entry of the header (or the header as a whole), re-serialised."""
    header = json.loads(json.dumps(header))
    keys = [k for k in header if k != "__metadata__" and well_formed(header[k])]
    if not keys:  # every entry already broken by an earlier edit
        return join(json.dumps(header, allow_nan=True), data, draw(st.integers(-4, 4)))
    key = draw(st.sampled_from(keys))
    entry = header[key]
    kind = draw(st.sampled_from(["dtype", "shape", "shape_item", "offsets", "offset_shift", "swap_offsets", "drop_key",
                                 "rename", "extra_field", "drop_field", "duplicate", "metadata", "not_object",
                                 "zero_tensor", "overlap", "length_field", "unicode_key"]))
    event(f"header edit: {kind}")
    length_delta = 0
    text = None
    if kind == "dtype":
        entry["dtype"] = draw(st.one_of(st.sampled_from(CRATE_DTYPES), NUMBERS))
    elif kind == "shape":
        entry["shape"] = draw(st.lists(st.one_of(st.integers(0, 40), NUMBERS), max_size=5))
    elif kind == "shape_item" and entry["shape"]:
        entry["shape"][draw(st.integers(0, len(entry["shape"]) - 1))] = draw(NUMBERS)
    elif kind == "offsets":
        entry["data_offsets"] = draw(st.lists(NUMBERS, min_size=0, max_size=3))
    elif kind == "offset_shift":
        i = draw(st.integers(0, 1))
        entry["data_offsets"][i] += draw(st.integers(-64, 64))
    elif kind == "swap_offsets":
        other = header[draw(st.sampled_from(keys))]
        entry["data_offsets"], other["data_offsets"] = other["data_offsets"], entry["data_offsets"]
    elif kind == "drop_key":
        del header[key]
    elif kind == "rename":
        header[draw(st.text(max_size=30))] = header.pop(key)
    elif kind == "extra_field":
        entry[draw(st.text(max_size=8))] = draw(NUMBERS)
    elif kind == "drop_field":
        del entry[draw(st.sampled_from(sorted(entry)))]
    elif kind == "duplicate":  # the same key twice, the second pointing at another tensor's bytes
        other = header[draw(st.sampled_from(keys))]
        text = json.dumps(header)[:-1] + ", " + json.dumps(key) + ": " + json.dumps(other) + "}"
    elif kind == "metadata":
        header["__metadata__"] = draw(st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5), max_size=3),
                                                NUMBERS, st.dictionaries(st.text(max_size=3), NUMBERS, max_size=2)))
    elif kind == "not_object":
        header = draw(st.one_of(st.lists(NUMBERS, max_size=3), NUMBERS))
    elif kind == "zero_tensor":  # an extra empty tensor, at some offset
        header[draw(st.text(min_size=1, max_size=10))] = {
            "dtype": draw(st.sampled_from(list(TORCH_DTYPES))),
            "shape": draw(st.lists(st.integers(0, 3), max_size=2).map(lambda s: s + [0])),
            "data_offsets": [draw(st.integers(0, len(data)))] * 2}
    elif kind == "overlap":  # one tensor reads another's bytes (the same length)
        other = header[draw(st.sampled_from(keys))]
        size = entry["data_offsets"][1] - entry["data_offsets"][0]
        start = other["data_offsets"][0]
        entry["data_offsets"] = [start, start + size]
    elif kind == "length_field":
        length_delta = draw(st.integers(-16, 16))
    elif kind == "unicode_key":  # escapes the library refuses (lone surrogates) or accepts (pairs, BMP)
        escape = draw(st.sampled_from(["\\ud800", "\\udfff", "\\ud83d\\ude00", "\\u00e9", "\\u0000", "\\ud800x"]))
        text = json.dumps(header).replace(json.dumps(key), '"' + key + escape + '"', 1)
    if text is None:
        text = json.dumps(header, allow_nan=True) + " " * draw(st.integers(0, 7))
    return join(text, data, length_delta)


@st.composite
def byte_edits(draw, content):
    """Raw damage: bytes flipped (mostly in the header), the file cut short, or bytes added."""
    content = bytearray(content)
    (n,) = struct.unpack("<Q", content[:8])
    kind = draw(st.sampled_from(["flip", "flip_header", "flip_data", "truncate", "append", "header_length"]))
    event(f"byte edit: {kind}")
    if kind in ("flip", "flip_header", "flip_data"):
        bottom = min(8 + n, len(content) - 1) if kind == "flip_data" else 0
        top = min(8 + n, len(content)) if kind == "flip_header" else len(content)
        for _ in range(draw(st.integers(1, 4))):
            content[draw(st.integers(bottom, top - 1))] ^= draw(st.integers(1, 255))
    elif kind == "truncate":
        content = content[:draw(st.integers(0, len(content) - 1))]
    elif kind == "append":
        content += draw(st.binary(min_size=1, max_size=16))
    else:
        content[:8] = struct.pack("<Q", draw(st.one_of(st.integers(0, len(content)), st.integers(0, 2**64 - 1))))
    return bytes(content)


@st.composite
def mutated_files(draw):
    base = BASES[draw(st.sampled_from(sorted(BASES)))]
    header, data = split(base)
    edits = draw(st.sampled_from([1, 1, 1, 2, 3]))
    content = base
    for _ in range(edits):
        if draw(st.booleans()):
            try:
                header, data = split(content)
            except (ValueError, UnicodeDecodeError, struct.error):  # already broken: damage the bytes instead
                content = draw(byte_edits(content)) if len(content) > 8 else content
                continue
            if not isinstance(header, dict):
                continue
            content = draw(header_edits(header, data))
        elif len(content) > 8:
            content = draw(byte_edits(content))
    return content


def reference(content):
    """What the safetensors library reads: {key: float32/float64 array}, or None if it refuses the bytes."""
    try:
        tensors = safetensors_load(content)
    except Exception:  # the library's own errors (SafetensorError, and TypeError for shapes torch cannot hold)
        return None
    return {k: (v.float() if v.dtype in (torch.float16, torch.bfloat16) else v).numpy() for k, v in tensors.items()}


def assert_same(ours, theirs):
    assert theirs is not None, "we read a file the safetensors library refuses"
    assert sorted(ours) == sorted(theirs)
    for key in ours:
        a, b = np.asarray(ours[key]), theirs[key]
        assert a.shape == b.shape and a.dtype == b.dtype, (key, a.shape, b.shape, a.dtype, b.dtype)
        # the same bits (so -0.0 is not 0.0), and NaN where the library has NaN: a float16 NaN's payload
        # comes out of NumPy's and torch's float32 conversions differently (the thorough profile found it)
        nan = np.isnan(a)
        assert np.array_equal(nan, np.isnan(b)), key
        assert np.array_equal(a[~nan].view(np.uint8), b[~nan].view(np.uint8)), key


def check_file(path, content):
    path.write_bytes(content)
    theirs = reference(content)
    try:
        ours = read_safetensors(path)
    except MixerError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        event("read_safetensors: MixerError" + (" (library reads it)" if theirs is not None else ""))
        if theirs is not None:  # where we are stricter than the library, and why
            event("stricter: " + re.sub(r"[0-9,]+|'.*?'", "#", str(e).removeprefix(f"{path}: "))[:60])
    else:
        event("read_safetensors: read, equal to the library")
        assert_same(ours, theirs)
    try:
        model = load_model(path)
    except MixerError as e:
        assert "\n" not in str(e)
        event("load_model: MixerError")
    else:
        event("load_model: loaded")
        assert_same(model.state_dict(), theirs)


@settings(max_examples=40 * settings().max_examples)
@given(content=mutated_files())
def test_mutated_checkpoints(tmp_path_factory, content):
    check_file(tmp_path_factory.mktemp("fuzz", numbered=True) / "m.safetensors", content)


@settings(max_examples=5 * settings().max_examples)
@given(content=st.one_of(st.binary(max_size=64),
                         st.builds(lambda n, body: struct.pack("<Q", n) + body,
                                   st.integers(0, 300), st.binary(max_size=300)),
                         st.builds(lambda obj, pad: join(json.dumps(obj), b"\0" * pad),
                                   st.dictionaries(st.text(max_size=5), st.fixed_dictionaries(
                                       {"dtype": st.sampled_from(CRATE_DTYPES), "shape": st.lists(NUMBERS, max_size=3),
                                        "data_offsets": st.lists(NUMBERS, max_size=3)}), max_size=3),
                                   st.integers(0, 64))))
def test_files_from_scratch(tmp_path_factory, content):
    check_file(tmp_path_factory.mktemp("fuzz", numbered=True) / "s.safetensors", content)


@pytest.mark.parametrize("dtype", sorted(BASES))
def test_the_unmutated_files_load_exactly(tmp_path, dtype):
    """The property's positive side: valid files of every float dtype load, equal to the library's reading."""
    path = tmp_path / f"{dtype}.safetensors"
    path.write_bytes(BASES[dtype])
    assert_same(read_safetensors(path), reference(BASES[dtype]))
    assert_same(load_model(path).state_dict(), reference(BASES[dtype]))
