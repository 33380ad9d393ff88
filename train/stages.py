"""The recipe's optional parts by name, no TensorFlow here: ResNet50's stages for fine-tuning
(`busi-train fit --fine-tune`) and the extra augmentations (`--augment-extra`)."""

from __future__ import annotations

#: ResNet50's stages, by the prefix of their layer names (conv1 is the stem)
STAGES = ("conv1", "conv2", "conv3", "conv4", "conv5")


def parse_stages(text: str) -> tuple[str, ...]:
    """'none' -> (); 'conv5' or 'conv4,conv5' -> the stages, in network order. ValueError names
    what is allowed."""
    names = [t.strip() for t in text.replace("+", ",").split(",") if t.strip()]
    if names in ([], ["none"]):
        return ()
    bad = [n for n in names if n not in STAGES]
    if bad:
        raise ValueError(f"unknown ResNet50 stage(s) {', '.join(bad)}: give none or stages among {', '.join(STAGES)}, e.g. conv5 or conv4,conv5")
    return tuple(s for s in STAGES if s in names)


#: `--augment-extra`: what busi.train.pipeline.train_dataset adds to the seed's augmentation
EXTRA_AUGMENTS = ("vflip", "intensity", "mixup")
EXTRA_TEXT = {
    "vflip": "vertical flip (joint image+mask)",
    "intensity": "brightness +-10% and contrast x0.8-1.2 (image only)",
    "mixup": "MixUp of the masked images and labels (Beta(0.2, 0.2))",
}


def parse_extra(text: str) -> tuple[str, ...]:
    """'none' -> (); 'vflip,intensity,mixup' -> the names, in canonical order. ValueError names
    what is allowed."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    if names in ([], ["none"]):
        return ()
    bad = [n for n in names if n not in EXTRA_AUGMENTS]
    if bad or len(set(names)) != len(names):
        raise ValueError(f"give none or among {', '.join(EXTRA_AUGMENTS)}, each once, comma-separated")
    return tuple(n for n in EXTRA_AUGMENTS if n in names)
