"""TEMPORARY stand-in until the metrics branch lands (numpy-only FID/KID/PRDC)."""
import numpy as np

from .metrics import fid_from_features, kid_from_features  # noqa: F401


def precision_recall(real, fake, k=5):
    from scipy.spatial.distance import cdist

    rr = cdist(real, real); ff = cdist(fake, fake); rf = cdist(real, fake)
    r_rad = np.sort(rr, 1)[:, k]; f_rad = np.sort(ff, 1)[:, k]
    precision = float((rf <= r_rad[:, None]).any(0).mean())
    recall = float((rf <= f_rad[None, :]).any(1).mean())
    density = float((rf <= r_rad[:, None]).sum(0).mean() / k)
    coverage = float((rf.min(1) <= r_rad).mean())
    return {"precision": precision, "recall": recall, "density": density, "coverage": coverage}
