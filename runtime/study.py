"""The summary of a study (busi-infer --by study, busi-node's study SR): over the classified
images of one study, the highest P(malignant) behind a flag, its image, and how many images
carry the flag."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Hashable


@dataclass(frozen=True)
class StudySummary:
    images: int  # classified images
    top: Hashable  # the key of the image with the highest P(malignant) (the first, on a tie)
    max_malignant: float
    flagged: int  # images whose P(malignant) is at or above the threshold
    threshold: float

    @property
    def malignant(self) -> bool:
        """Whether any image of the study carries the malignant flag."""
        return self.flagged > 0


def summarise_study(p_malignant: dict[Hashable, float], threshold: float) -> StudySummary:
    """`p_malignant`: image key (a path, a SOP Instance UID) -> the P(malignant) behind its
    flag (`results.flag_probability`), for a study's classified images (at least one)."""
    top = max(p_malignant, key=p_malignant.__getitem__)
    return StudySummary(images=len(p_malignant), top=top, max_malignant=float(p_malignant[top]),
                        flagged=sum(float(p) >= threshold for p in p_malignant.values()), threshold=float(threshold))
