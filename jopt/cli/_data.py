"""The data of ``jopt train``: a scikit-learn bundled data set or a user's ``.npz`` file,
checked, split (fixed seed) and standardized."""

from __future__ import annotations

import argparse
import os
from typing import Any

import numpy as np

from jopt.cli._common import SPLIT_SEED, TEST_FRACTION, VAL_FRACTION, CLIError, one_line

_F32_MAX = float(np.finfo(np.float32).max)


def _load_npz(path: str) -> tuple[np.ndarray, np.ndarray]:
    if not os.path.exists(path):
        raise CLIError(f"data file not found: {path}")
    if os.path.isdir(path):
        raise CLIError(f"data file is a directory: {path}")
    try:
        # allow_pickle=False: a data file is never unpickled (pickles can run code).
        archive = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        # numpy calls any file it does not recognize "pickled data" and suggests unpickling
        # it: say what the file is not, in our own words.
        raise CLIError(f"{path} is not an .npz archive (a zip file of .npy arrays, as "
                       "numpy.savez(path, X=X, y=y) writes)") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise CLIError(f"{path} is a single .npy array, not an .npz archive with arrays X and y")
    with archive:
        missing = [k for k in ("X", "y") if k not in archive.files]
        if missing:
            found = ", ".join(archive.files) or "none"
            raise CLIError(
                f"{path} lacks array(s) {', '.join(missing)} (it needs X and y; found: {found})"
            )
        arrays = []
        for key in ("X", "y"):
            try:
                arrays.append(archive[key])
            except ValueError as e:
                if "allow_pickle" in str(e) or "Object arrays" in str(e):
                    # numpy refuses object arrays when allow_pickle=False.
                    raise CLIError(f"array {key} in {path} is not numeric (object arrays are "
                                   "never unpickled)") from None
                raise CLIError(f"cannot read array {key} in {path}: the member is truncated or "
                               f"corrupt ({one_line(e)})") from None
            except Exception as e:  # a corrupt member: zlib, zipfile or format errors
                raise CLIError(f"cannot read array {key} in {path}: the member is truncated or "
                               f"corrupt ({one_line(e)})") from None
    return arrays[0], arrays[1]


def check_arrays(X: np.ndarray, y: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Validates ``X`` and ``y``; returns float32 features and int32 labels 0..k-1."""
    def is_real(a):
        return a.dtype.kind in "biuf"

    if not is_real(X):
        raise CLIError(f"X in {source} must be numeric (int, float or bool); got dtype {X.dtype}")
    if X.ndim != 2:
        raise CLIError(f"X in {source} must be 2-D (samples x features); got shape {X.shape}")
    if not is_real(y):
        raise CLIError(f"y in {source} must hold integer class labels; got dtype {y.dtype}")
    if y.ndim != 1:
        raise CLIError(f"y in {source} must be 1-D (one label per sample); got shape {y.shape}")
    if X.shape[0] != y.shape[0]:
        raise CLIError(
            f"X and y in {source} have different lengths: {X.shape[0]} samples, "
            f"{y.shape[0]} labels"
        )
    if X.shape[0] == 0:
        raise CLIError(f"X in {source} has no samples (shape {X.shape})")
    if X.shape[1] == 0:
        raise CLIError(f"X in {source} has no features (shape {X.shape})")
    X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        raise CLIError(f"X in {source} contains NaN or infinite values")
    # The features are standardised and trained in float32: values whose squares overflow
    # float64 or that overflow float32 cannot be (scale the data first).
    if np.max(np.abs(X)) > 1e150:
        raise CLIError(f"X in {source} has values too large to standardise "
                       f"(max |x| = {np.max(np.abs(X)):.3g}; scale the data first)")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
            raise CLIError(f"y in {source} must hold integer class labels; got non-integer values")
    classes, labels = np.unique(y, return_inverse=True)
    if classes.shape[0] < 2:
        raise CLIError(f"y in {source} must contain at least 2 classes; got {classes.shape[0]}")
    if X.shape[0] < 10:
        raise CLIError(f"{source} has {X.shape[0]} samples; at least 10 are needed to split it")
    return X, labels.astype(np.int32).reshape(-1)


def load_data(args: argparse.Namespace, sklearn: Any) -> dict[str, Any]:
    """Loads, checks, splits (fixed seed) and standardises the data.

    Returns:
      A dict with ``name``, float32 ``X_train``/``X_val``/``X_test``, int32 ``y_*`` and
      ``n_classes``. Features are standardised with the training split's mean and standard
      deviation only, so nothing leaks from the held-out splits.
    """
    if args.data is not None:
        X, y = _load_npz(args.data)
        name = args.data
    else:
        loader = getattr(sklearn.datasets, f"load_{args.dataset}")
        X, y = loader(return_X_y=True)
        name = args.dataset
    X, y = check_arrays(np.asarray(X), np.asarray(y), name)
    split = sklearn.model_selection.train_test_split
    idx = np.arange(X.shape[0])
    n_hold = VAL_FRACTION + TEST_FRACTION

    def two_way(ix, frac, labels):
        try:  # stratify when every class has enough members, else split at random
            return split(ix, test_size=frac, random_state=SPLIT_SEED, stratify=labels)
        except ValueError:
            return split(ix, test_size=frac, random_state=SPLIT_SEED)

    tr, hold = two_way(idx, n_hold, y)
    va, te = two_way(hold, TEST_FRACTION / n_hold, y[hold])
    scaler = sklearn.preprocessing.StandardScaler().fit(X[tr])
    out = {"name": name, "n_classes": int(y.max()) + 1, "n_features": int(X.shape[1])}
    # A feature that is constant up to rounding (a huge value with a spread of a few ulps)
    # standardizes to rounding noise, amplified past float32 for large enough values: a
    # training run then diverges for no visible reason. Say so instead.
    mean, spread = scaler.mean_, np.sqrt(scaler.var_)
    noisy = (spread <= 1e-10 * np.abs(mean)) & (np.ptp(X[tr], axis=0) > 0)
    if np.any(noisy):
        j = int(np.argmax(noisy))
        raise CLIError(f"feature {j} of X in {name} is constant up to rounding (mean "
                       f"{mean[j]:.3g}, spread {spread[j]:.3g}): standardizing it would give "
                       "rounding noise, not data; drop that feature or subtract its mean first")
    for part, ix in (("train", tr), ("val", va), ("test", te)):
        with np.errstate(all="ignore"):
            standardized = scaler.transform(X[ix])
        if not (np.all(np.isfinite(standardized))
                and np.max(np.abs(standardized), initial=0.0) <= _F32_MAX):
            raise CLIError(f"X in {name} cannot be standardized in float32 (the {part} split "
                           "gives values beyond float32's range): rescale the data first")
        out[f"X_{part}"] = standardized.astype(np.float32)
        out[f"y_{part}"] = y[ix].astype(np.int32)
    return out

