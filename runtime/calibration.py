"""Temperature scaling, applied with numpy: the network's probabilities -> calibrated ones.

softmax(log p / T) equals softmax(logits / T) (a softmax is unchanged by a constant shift of
its inputs, and log p = logits - logsumexp(logits)), so the exported graph's probabilities
are enough: the graph, its parity gate and older files stay as they are, and the one number T
travels in the metadata. T > 1 softens over-confident outputs; the argmax never changes.
"""

from __future__ import annotations

import numpy as np

#: probabilities below this are treated as this (float32 softmax can underflow to 0)
FLOOR = 1e-30


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """(..., classes) probabilities scaled by 1/T in log space and renormalised."""
    z = np.log(np.clip(np.asarray(p, dtype=np.float64), FLOOR, 1.0)) / float(temperature)
    z -= z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)
