r"""The ``synthetic`` data set: labels from a fixed random teacher network, inputs of any width.

The task, for ``n_features = d``, ``n_classes = C`` and teacher hidden width ``H``:

1. The teacher draws :math:`W_1 \in \mathbb{R}^{H \times d}` with entries
   :math:`\mathcal{N}(0, 1/d)`, :math:`b_1 \sim \mathcal{N}(0, 0.25)` per unit and
   :math:`W_2 \in \mathbb{R}^{C \times H}` with entries :math:`\mathcal{N}(0, 1)`.
2. Inputs are :math:`x \sim \mathcal{N}(0, I_d)`, so the hidden pre-activations
   :math:`h = W_1 x + b_1` are exactly :math:`\mathcal{N}(b_1, W_1 W_1^T)`, an H-dimensional
   Gaussian. The teacher samples a calibration set of :data:`N_CALIBRATION` such ``h`` directly
   (cost O(N H^2 + H^2 d), never O(N d)) and computes their logits
   :math:`\ell = W_2 \,\mathrm{relu}(h)`.
3. Class balance: each row of :math:`W_2` is divided by the standard deviation of its logit on the
   calibration set (equal spread per class), then offsets :math:`b_2` (starting at minus the mean
   logit) are adjusted by a few steps of dual ascent, :math:`b_{2c} \mathrel{+}= \eta_t
   \,\mathrm{clip}((1/C - f_c) C, -1, 1)` with :math:`f_c` the calibration frequency of class c,
   until every class frequency is within 20% of 1/C (or :data:`MAX_BALANCE_STEPS` steps have run).
   With the defaults the classes come out close to uniform; for very narrow inputs (d of 1 or 2)
   and many classes exact balance is not always reachable and some classes can stay rare.
4. The label is :math:`y = \arg\max_c \,(W_2 \,\mathrm{relu}(W_1 x + b_1) + b_2)_c`
   (ties: the lowest class index).

Determinism: one ``numpy.random.SeedSequence(task_seed)`` spawns three independent streams, for the
teacher, the training inputs and the test inputs, so the test set does not change with ``n_train``.
Memory is O(n * d + d * H): inputs are drawn directly in float32 and the teacher forms nothing wider
than its weights.
"""

from __future__ import annotations

import math

import numpy as np

from .errors import DataError

#: Calibration samples of hidden pre-activations used to balance the classes.
N_CALIBRATION = 16384
#: Upper bound on the balancing steps.
MAX_BALANCE_STEPS = 300

#: Options accepted by :func:`make_synthetic` (and by ``load_dataset("synthetic", ...)``).
DEFAULTS = {
    "n_features": 100,
    "n_classes": 10,
    "n_train": 4000,
    "n_test": 1000,
    "hidden": 32,
    "task_seed": 0,
}


def _balance_offsets(logits: np.ndarray, tol: float = 0.2) -> np.ndarray:
    """Offsets b (shape (C,)) that make argmax(logits + b) close to uniform over the C classes.

    Dual ascent on the class frequencies (step 3 of the module docstring); deterministic.
    """
    n, n_classes = logits.shape
    target = 1.0 / n_classes
    b = -logits.mean(axis=0)
    for step in range(MAX_BALANCE_STEPS):
        freq = np.bincount(np.argmax(logits + b, axis=1), minlength=n_classes) / n
        if np.abs(freq - target).max() <= tol * target:
            break
        b += 0.5 / math.sqrt(1.0 + step / 20.0) * np.clip((target - freq) / target, -1.0, 1.0)
    return b


class Teacher:
    """The fixed teacher MLP of the synthetic task (see the module docstring).

    Parameters
    ----------
    n_features, n_classes, hidden : int
        Input width d, number of classes C, hidden width H.
    rng : numpy.random.Generator
        Source of the weights and of the calibration sample.

    Attributes
    ----------
    w1 : numpy.ndarray of float32, shape (H, d)
    b1 : numpy.ndarray of float32, shape (H,)
    w2 : numpy.ndarray of float64, shape (C, H)
    b2 : numpy.ndarray of float64, shape (C,)
    """

    def __init__(self, n_features: int, n_classes: int, hidden: int, rng: np.random.Generator):
        self.w1 = rng.standard_normal((hidden, n_features), dtype=np.float32)
        self.w1 /= np.float32(math.sqrt(n_features))
        self.b1 = (0.5 * rng.standard_normal(hidden)).astype(np.float32)
        w2 = rng.standard_normal((n_classes, hidden))
        # h = W1 x + b1 ~ N(b1, W1 W1^T): sample it as b1 + z R^T with R R^T = W1 W1^T, z ~ N(0, I_H)
        cov = (self.w1 @ self.w1.T).astype(np.float64)  # (H, d) @ (d, H) -> (H, H)
        eigval, eigvec = np.linalg.eigh(cov)
        root = eigvec * np.sqrt(np.clip(eigval, 0.0, None))  # (H, H)
        h = rng.standard_normal((N_CALIBRATION, hidden)) @ root.T + self.b1  # (N, H)
        logits = np.maximum(h, 0.0) @ w2.T  # (N, H) @ (H, C) -> (N, C)
        spread = logits.std(axis=0)
        spread[spread == 0.0] = 1.0
        self.w2 = w2 / spread[:, None]
        self.b2 = _balance_offsets(logits / spread)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """Teacher logits, float64 of shape (n, C), for inputs x of shape (n, d)."""
        h = x @ self.w1.T  # (n, d) @ (d, H) -> (n, H), float32
        h += self.b1
        np.maximum(h, 0.0, out=h)
        return h.astype(np.float64) @ self.w2.T + self.b2  # (n, H) @ (H, C) -> (n, C)

    def labels(self, x: np.ndarray) -> np.ndarray:
        """Teacher labels, int64 of shape (n,): argmax of the logits, lowest index on ties."""
        return np.argmax(self.logits(x), axis=1).astype(np.int64)


def check_options(options: dict) -> dict:
    """Fill in defaults and validate the synthetic options; unknown or invalid ones are a DataError."""
    unknown = sorted(set(options) - set(DEFAULTS))
    if unknown:
        raise DataError(
            f"unknown synthetic option(s) {', '.join(unknown)}; valid: {', '.join(DEFAULTS)}"
        )
    merged = {**DEFAULTS, **options}
    for key, value in merged.items():
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise DataError(f"synthetic option {key} must be an integer, got {value!r}")
        minimum = 0 if key == "task_seed" else (2 if key == "n_classes" else 1)
        if value < minimum:
            raise DataError(f"synthetic option {key} must be >= {minimum}, got {value}")
        merged[key] = int(value)
    return merged


def make_synthetic(**options) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Generate the synthetic task.

    Parameters
    ----------
    n_features : int, default 100
    n_classes : int, default 10
    n_train : int, default 4000
    n_test : int, default 1000
    hidden : int, default 32
        Teacher hidden width.
    task_seed : int, default 0
        Picks the teacher and the samples; the same options always give the same arrays.

    Returns
    -------
    x_train : numpy.ndarray of float32, shape (n_train, n_features)
    y_train : numpy.ndarray of int64, shape (n_train,)
    x_test : numpy.ndarray of float32, shape (n_test, n_features)
    y_test : numpy.ndarray of int64, shape (n_test,)
    """
    o = check_options(options)
    teacher_ss, train_ss, test_ss = np.random.SeedSequence(o["task_seed"]).spawn(3)
    teacher = Teacher(o["n_features"], o["n_classes"], o["hidden"], np.random.default_rng(teacher_ss))
    d = o["n_features"]
    x_train = np.random.default_rng(train_ss).standard_normal((o["n_train"], d), dtype=np.float32)
    x_test = np.random.default_rng(test_ss).standard_normal((o["n_test"], d), dtype=np.float32)
    return x_train, teacher.labels(x_train), x_test, teacher.labels(x_test)
