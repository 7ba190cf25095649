"""A digit classifier of the public pool, for the class histograms of the specificity table.

Multinomial logistic regression on standardised pixels (scikit-learn), fitted on the
labelled public pool only and checked on the held-out public validation pool; saved as
plain arrays (no pickle) and applied with numpy, so a sampling job pays no import for it.
It labels generated samples; the histogram of those labels is compared with each private
set's label histogram (total variation) in the specificity table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DigitClassifier:
    weight: np.ndarray  # [C, D]
    bias: np.ndarray  # [C]
    classes: np.ndarray  # [C] label values
    mean: np.ndarray  # [D] pixel standardisation
    scale: np.ndarray  # [D]
    shape: tuple  # H, W, C of the images it was fitted on
    validation_accuracy: float

    def _x(self, images: np.ndarray) -> np.ndarray:
        if tuple(images.shape[1:]) != tuple(self.shape):
            raise ValueError(f"the classifier was fitted on images {tuple(self.shape)}, got {tuple(images.shape[1:])}")
        return (images.reshape(len(images), -1).astype(np.float64) / 255.0 - self.mean) / self.scale

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Labels of uint8 [N, H, W, C] images."""
        return self.classes[np.argmax(self._x(images) @ self.weight.T + self.bias, axis=1)]

    def save(self, path) -> None:
        from .data import atomic_savez

        atomic_savez(path, {"weight": self.weight, "bias": self.bias, "classes": self.classes,
                            "mean": self.mean, "scale": self.scale, "shape": np.asarray(self.shape),
                            "validation_accuracy": np.asarray(self.validation_accuracy)})


def fit(images: np.ndarray, labels: np.ndarray, val_images: np.ndarray, val_labels: np.ndarray,
        *, c: float = 0.1, seed: int = 0) -> DigitClassifier:
    """Fit on (images, labels) -> a :class:`DigitClassifier` with its validation accuracy."""
    from sklearn.linear_model import LogisticRegression

    x = images.reshape(len(images), -1).astype(np.float64) / 255.0
    mean, scale = x.mean(0), x.std(0) + 1e-3
    model = LogisticRegression(C=c, max_iter=500, random_state=seed)
    model.fit((x - mean) / scale, labels)
    clf = DigitClassifier(model.coef_, model.intercept_, model.classes_, mean, scale,
                          tuple(images.shape[1:]), float("nan"))
    clf.validation_accuracy = float(np.mean(clf.predict(val_images) == val_labels))
    return clf


def load(path) -> DigitClassifier:
    z = np.load(path)
    return DigitClassifier(z["weight"], z["bias"], z["classes"], z["mean"], z["scale"],
                           tuple(int(v) for v in z["shape"]), float(z["validation_accuracy"]))


def histogram(labels: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Label frequencies over ``classes`` (sums to 1)."""
    counts = np.array([(labels == c).sum() for c in classes], dtype=np.float64)
    return counts / max(1.0, counts.sum())
