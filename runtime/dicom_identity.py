"""busi's DICOM identity, in one place for busi-infer and busi-node: who made an object (the
Manufacturer busi writes, by which it also recognises its own objects), the settings that
enter its deterministic UIDs, and the UID derivation itself.

The UIDs of an output depend only on the source SOP instance, the model's sha256, the busi
version and the settings that change the result (`options`), so busi-infer and busi-node give
the same objects the same UIDs, and a re-run replaces instead of duplicating.
"""

from __future__ import annotations

MANUFACTURER = "busi (research software, not a medical device)"


def options(mask=None, threshold: float | None = None, tta: bool = False, frames="all") -> str:
    """The settings that change a result, as they enter the UIDs. `mask`: 'auto', 'none' (or
    None: the whole image), a mask path or a box (x, y, w, h); `frames`: 'all' (every frame of a
    cine loop) or the 0-based frame classified."""
    if mask is None:
        mask = "none"
    elif isinstance(mask, (tuple, list)):
        mask = tuple(int(v) for v in mask)
    frames = getattr(frames, "value", frames)  # an Enum member ('all') as its value
    return f"mask={mask} threshold={threshold} tta={tta} frames={frames}"


def uid(*parts) -> str:
    """A UID that depends only on `parts` (and the busi version): the same input, model and
    options give the same UID, so a re-run replaces instead of duplicating."""
    from pydicom.uid import generate_uid

    from busi import __version__

    return generate_uid(entropy_srcs=["busi", __version__, *map(str, parts)])


def is_busi_output(ds) -> bool:
    """Whether a DICOM dataset (a header suffices) is one busi wrote: its outputs are never its inputs."""
    return str(ds.get("Manufacturer", "") or "").startswith(MANUFACTURER)
