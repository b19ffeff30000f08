"""Digits as people make them, generated: typed in a font or drawn with a pen, thin or bold, anywhere in
the frame, slightly rotated, dark on light or light on dark. The digits model trains and is tested on these.

    pictures, labels = drawn_digits(1000, seed=0, split="test")      # uint8 [1000, 48, 48, 3], int [1000]

Two sources of glyph shapes:
  fonts:  the system DejaVu fonts (22 files), each digit rendered by FreeType through Pillow;
  pens:   a hand-written skeleton of each digit (one to three variants per digit, as polylines and arcs),
          jittered, slanted and wobbled, then drawn with a pen style.
The test split holds out whole fonts (TEST_FONTS) and a whole pen style (TEST_PENS, a brush whose width
follows the pressure along the stroke): no test picture shares its font or its pen with a training one.
A third source, scikit-learn's 8x8 digits placed like the others, is added by numpy_mixer.train.

Everything is drawn from numpy.random.default_rng(seed), so a (count, seed, split) gives the same
pictures on any machine with the same fonts and Pillow.
"""
import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .errors import MixerError

FONT_DIR = "/usr/share/fonts/truetype/dejavu"
FONTS = ("DejaVuMathTeXGyre", "DejaVuSans", "DejaVuSans-Bold", "DejaVuSans-BoldOblique", "DejaVuSans-ExtraLight",
         "DejaVuSans-Oblique", "DejaVuSansCondensed", "DejaVuSansCondensed-Bold", "DejaVuSansCondensed-BoldOblique",
         "DejaVuSansCondensed-Oblique", "DejaVuSansMono", "DejaVuSansMono-Bold", "DejaVuSansMono-BoldOblique",
         "DejaVuSansMono-Oblique", "DejaVuSerif", "DejaVuSerif-Bold", "DejaVuSerif-BoldItalic", "DejaVuSerif-Italic",
         "DejaVuSerifCondensed", "DejaVuSerifCondensed-Bold", "DejaVuSerifCondensed-BoldItalic",
         "DejaVuSerifCondensed-Italic")
TEST_FONTS = ("DejaVuSansCondensed-Bold", "DejaVuSansMono-Oblique", "DejaVuSerif-Italic", "DejaVuSerifCondensed")
TRAIN_FONTS = tuple(f for f in FONTS if f not in TEST_FONTS)
PENS = ("fineliner", "ballpoint", "marker", "brush")
TEST_PENS = ("brush",)
TRAIN_PENS = tuple(p for p in PENS if p not in TEST_PENS)
CANVAS = 48  # pictures are CANVAS x CANVAS RGB; preprocessing resizes them like any user's picture
GLYPH = 64  # glyphs are drawn this tall before they are placed


# --- skeletons: each digit as strokes in a box 0.6 wide and 1 tall (x right, y down) -----------------------


def _arc(cx, cy, rx, ry, start, stop, n=24):
    """Points on an ellipse from angle start to stop (degrees; 0 = right, 90 = down)."""
    t = np.radians(np.linspace(start, stop, n))
    return [(cx + rx * math.cos(a), cy + ry * math.sin(a)) for a in t]


def _figure_eight(n=48):
    t = np.linspace(0, 2 * math.pi, n)
    return [(0.3 - 0.26 * math.sin(2 * a) * (0.8 if a < math.pi else 1.0), 0.5 - 0.5 * math.cos(a)) for a in t]


SKELETONS = {  # digit -> variants -> strokes -> points
    0: [[_arc(0.3, 0.5, 0.28, 0.48, -90, 270)],
        [_arc(0.3, 0.5, 0.26, 0.48, -100, 285)]],
    1: [[[(0.3, 0.0), (0.3, 1.0)]],
        [[(0.1, 0.22), (0.3, 0.0), (0.3, 1.0)]],
        [[(0.1, 0.22), (0.3, 0.0), (0.3, 1.0)], [(0.1, 1.0), (0.5, 1.0)]]],
    2: [[_arc(0.3, 0.27, 0.26, 0.25, 200, 380) + [(0.02, 1.0), (0.6, 1.0)]],
        [_arc(0.3, 0.28, 0.27, 0.27, 190, 360) + [(0.4, 0.62), (0.05, 1.0), (0.58, 0.97)]]],
    3: [[_arc(0.3, 0.26, 0.25, 0.24, 210, 450, 20) + _arc(0.3, 0.74, 0.28, 0.26, -90, 150, 20)],
        [[(0.04, 0.0), (0.56, 0.0), (0.25, 0.42)] + _arc(0.3, 0.71, 0.28, 0.29, -100, 150, 20)]],
    4: [[[(0.45, 1.0), (0.45, 0.0), (0.0, 0.68), (0.6, 0.68)]],
        [[(0.15, 0.0), (0.05, 0.62), (0.6, 0.62)], [(0.45, 0.25), (0.45, 1.0)]]],
    5: [[[(0.55, 0.0), (0.1, 0.0), (0.06, 0.45)] + _arc(0.3, 0.7, 0.28, 0.3, -145, 150, 20)],
        [[(0.1, 0.0), (0.05, 0.45)] + _arc(0.3, 0.7, 0.27, 0.3, -150, 150, 20), [(0.1, 0.0), (0.56, 0.0)]]],
    6: [[[(0.5, 0.02), (0.3, 0.1), (0.12, 0.35), (0.04, 0.66)] + _arc(0.3, 0.72, 0.26, 0.27, 180, 540)],
        [[(0.45, 0.0), (0.08, 0.55)] + _arc(0.3, 0.73, 0.25, 0.26, 200, 560)]],
    7: [[[(0.02, 0.0), (0.58, 0.0), (0.22, 1.0)]],
        [[(0.02, 0.0), (0.58, 0.0), (0.22, 1.0)], [(0.15, 0.5), (0.5, 0.5)]],
        [[(0.02, 0.12), (0.04, 0.0), (0.58, 0.0), (0.3, 0.55), (0.25, 1.0)]]],
    8: [[_arc(0.3, 0.25, 0.22, 0.24, 90, 450), _arc(0.3, 0.73, 0.28, 0.27, -90, 270)],
        [_figure_eight()]],
    9: [[_arc(0.3, 0.28, 0.26, 0.27, 0, 360) + [(0.52, 1.0)]],
        [_arc(0.3, 0.28, 0.26, 0.27, 0, 360) + _arc(0.3, 0.7, 0.26, 0.3, 0, 120, 12)]],
}


def _resample(points, step):
    """A polyline with a point every `step` (box units) along it. [(x, y)] -> [n, 2]"""
    p = np.asarray(points, np.float64)
    seg = np.hypot(*np.diff(p, axis=0).T)
    s = np.concatenate([[0.0], np.cumsum(seg)])
    t = np.linspace(0, s[-1], max(2, int(s[-1] / step) + 1))
    return np.stack([np.interp(t, s, p[:, 0]), np.interp(t, s, p[:, 1])], axis=1)


def stroke_glyph(digit, pen, rng):
    """One digit drawn with a pen along a jittered skeleton -> an 'L' mask (ink 255), cropped to the ink."""
    variants = SKELETONS[digit]
    strokes = variants[rng.integers(len(variants))]
    # the hand: a random affine (slant, squash) and smooth wobble along each stroke
    slant, squash = rng.uniform(-0.3, 0.3), rng.uniform(0.8, 1.25)
    width = {"fineliner": rng.uniform(0.03, 0.06), "ballpoint": rng.uniform(0.015, 0.04),
             "marker": rng.uniform(0.08, 0.16), "brush": rng.uniform(0.06, 0.14)}[pen]
    wobble = rng.uniform(0.005, 0.03) if pen != "ballpoint" else rng.uniform(0.01, 0.04)
    pad = 0.2
    scale = GLYPH / (1 + 2 * pad)
    size = (int(GLYPH * 1.2), GLYPH)
    img = Image.new("L", size, 0)
    draw = ImageDraw.Draw(img)
    for stroke in strokes:
        p = _resample(stroke, 0.02) + rng.normal(0, 0.025, 2)  # [n, 2], each stroke shifted a little
        n = len(p)
        t = np.linspace(0, 1, n)
        phase = rng.uniform(0, 2 * math.pi, (2, 3))
        offset = np.stack([sum(np.sin(2 * math.pi * (k + 1) * t + phase[d, k]) / (k + 1) for k in range(3))
                           for d in range(2)], axis=1)  # [n, 2], smooth
        p = p + wobble * offset
        x = (p[:, 0] - slant * (p[:, 1] - 0.5)) * squash + pad + 0.1
        y = p[:, 1] + pad
        xy = np.stack([x, y], 1) * scale
        w = width * scale
        if pen == "brush":  # pressure: thin at the ends, widest in the middle, varying along the stroke
            pressure = 0.35 + 0.65 * np.sin(np.pi * np.linspace(0.05, 0.95, n)) ** rng.uniform(0.5, 1.5)
            pressure *= 1 + 0.25 * np.sin(np.linspace(0, rng.uniform(2, 8), n) + rng.uniform(0, 6))
            for (cx, cy), r in zip(xy, w * pressure / 2):
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        else:
            draw.line([tuple(q) for q in xy], fill=255, width=max(1, int(round(w))), joint="curve")
            r = w / 2
            for cx, cy in (xy[0], xy[-1]):  # round caps
                draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    return _crop(img)


# --- fonts -----------------------------------------------------------------------------------------------

_font_cache = {}


def font_glyph(digit, font):
    """The digit typed in a DejaVu font -> an 'L' mask (ink 255), cropped to the ink (about 1.2 GLYPH tall)."""
    key = (digit, font)
    if key not in _font_cache:
        path = os.path.join(FONT_DIR, f"{font}.ttf")
        if not os.path.isfile(path):  # checked here: Pillow would look for another file of that name
            raise MixerError(f"{path}: font not found; the synthetic digits need the DejaVu fonts "
                             "(Debian/Ubuntu: apt-get install fonts-dejavu)")
        face = ImageFont.truetype(path, int(GLYPH * 1.6))
        img = Image.new("L", (GLYPH * 3, GLYPH * 3), 0)
        ImageDraw.Draw(img).text((GLYPH // 2, GLYPH // 4), str(digit), fill=255, font=face)
        _font_cache[key] = _crop(img)
    return _font_cache[key]


def _crop(img):
    box = img.getbbox()
    return img.crop(box) if box else img


# --- placing a glyph on a picture ------------------------------------------------------------------------


def bolden(glyph, rng):
    """Thinner or bolder ink: a min or max filter on the mask (fonts and scans; pens have their width)."""
    choice = rng.choice(["thin", "same", "bold", "bolder"], p=[0.2, 0.35, 0.3, 0.15])
    if choice == "thin" and min(glyph.size) > 12:
        return glyph.filter(ImageFilter.MinFilter(3))
    if choice == "bold":
        return glyph.filter(ImageFilter.MaxFilter(5))
    if choice == "bolder":
        return glyph.filter(ImageFilter.MaxFilter(9))
    return glyph


def place(glyph, rng, canvas=CANVAS, height=(0.45, 1.0)):
    """Scale, stretch, rotate and put a glyph mask somewhere on an empty canvas. -> float mask [canvas, canvas]"""
    h = canvas * rng.uniform(*height)
    w = h * glyph.size[0] / glyph.size[1] * rng.uniform(0.8, 1.2)
    g = glyph.resize((max(1, round(w)), max(1, round(h))), Image.Resampling.BILINEAR)
    g = g.rotate(rng.uniform(-12, 12), Image.Resampling.BILINEAR, expand=True)
    g = _crop(g)
    if max(g.size) > canvas:  # tight crops: fit the rotated glyph in the frame
        f = canvas / max(g.size)
        g = g.resize((max(1, int(g.size[0] * f)), max(1, int(g.size[1] * f))), Image.Resampling.BILINEAR)
    mask = np.zeros((canvas, canvas), np.float32)
    gw, gh = g.size
    left, top = rng.integers(0, canvas - gw + 1), rng.integers(0, canvas - gh + 1)
    mask[top:top + gh, left:left + gw] = np.asarray(g, np.float32) / 255
    return mask


def paint(mask, rng, polarity=None):
    """Ink and paper colours for a mask: dark on light (polarity 0) or light on dark (1), a little colour
    and noise now and then. float [S, S] -> uint8 [S, S, 3]"""
    if polarity is None:
        polarity = rng.integers(2)
    paper, ink = rng.uniform(175, 255), rng.uniform(0, 90)
    if polarity:
        paper, ink = 255 - paper, 255 - ink
    paper, ink = np.full(3, paper), np.full(3, ink)
    if rng.random() < 0.3:  # coloured ink or paper (a blue pen, a red marker, cream paper)
        ink = np.clip(ink + rng.uniform(-70, 70, 3), 0, 255)
        paper = np.clip(paper + rng.uniform(-25, 25, 3), 0, 255)
    rgb = paper + mask[..., None] * (ink - paper)  # [S, S, 3]
    if rng.random() < 0.5:
        rgb = rgb + rng.normal(0, rng.uniform(1, 10), rgb.shape)
    return np.clip(np.round(rgb), 0, 255).astype(np.uint8)


def framed(glyph, size=128, height=0.6, centre=(0.5, 0.5), ink=(0, 0, 0), paper=(255, 255, 255)):
    """One glyph as a deliberate picture: `height` (a fraction of the frame) tall, centred at `centre`
    (fractions of the frame), RGB ink on RGB paper. -> uint8 [size, size, 3]"""
    h = round(size * height)
    g = glyph.resize((max(1, round(h * glyph.size[0] / glyph.size[1])), h), Image.Resampling.LANCZOS)
    mask = np.zeros((size, size), np.float32)
    left, top = round(centre[0] * size - g.size[0] / 2), round(centre[1] * size - g.size[1] / 2)
    mask[top:top + g.size[1], left:left + g.size[0]] = np.asarray(g, np.float32) / 255
    paper = np.asarray(paper, np.float32)
    rgb = paper + mask[..., None] * (np.asarray(ink, np.float32) - paper)  # [size, size, 3]
    return np.round(rgb).astype(np.uint8)


def drawn_digits(count, seed=0, split="train", canvas=CANVAS):
    """count pictures of digits, half typed in fonts and half drawn with pens, from the split's fonts and
    pens ("train" or "test"); labels cycle 0..9. -> (uint8 [count, canvas, canvas, 3], int64 [count])"""
    if split not in ("train", "test"):
        raise MixerError(f"split {split!r}: expected 'train' or 'test'")
    fonts, pens = (TRAIN_FONTS, TRAIN_PENS) if split == "train" else (TEST_FONTS, TEST_PENS)
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 10
    pictures = np.empty((count, canvas, canvas, 3), np.uint8)
    for i, digit in enumerate(labels):
        if i % 20 < 10:  # fonts and pens alternate in blocks of ten, so every digit gets both
            glyph = bolden(font_glyph(digit, fonts[rng.integers(len(fonts))]), rng)
        else:
            glyph = stroke_glyph(digit, pens[rng.integers(len(pens))], rng)
        pictures[i] = paint(place(glyph, rng, canvas), rng)
    return pictures, labels
