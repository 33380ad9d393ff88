"""ResNet50's stages by name, for fine-tuning (`busi-train fit --fine-tune`); no TensorFlow here."""

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
