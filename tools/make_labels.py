"""Regenerate numpy_mixer/data/*.txt, the class names of each label set, from timm's ImageNet info.

One line per class index: the WordNet lemmas of its synset ("tabby, tabby cat").
Run (needs timm): python tools/make_labels.py
"""
from pathlib import Path

from timm.data import ImageNetInfo

OUT = Path(__file__).resolve().parents[1] / "numpy_mixer" / "data"
SUBSETS = {"imagenet-1k": "imagenet-1k", "imagenet-21k-goog": "imagenet-21k-goog",
           "imagenet-21k-miil": "imagenet-21k-miil"}

for name, subset in SUBSETS.items():
    info = ImageNetInfo(subset)
    names = info.label_descriptions()
    (OUT / f"{name}.txt").write_text("\n".join(names) + "\n", encoding="utf-8")
    print(f"{name}: {len(names)} classes")
