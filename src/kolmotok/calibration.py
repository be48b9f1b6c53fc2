"""Calibrated quality guarantee: split-conformal choice of the condition to encode with.

KARL conditions its halting on a target error, but a share of images misses the target
after the single pass (KARL's paper: about 1 in 10 at eps = 0.05). Calibration turns the
target into a promise with a stated confidence: for a requested eps and a miss rate alpha,
it finds the condition c(eps) such that, for an image exchangeable with the calibration
images, P(l1 <= eps when encoded at condition c(eps)) >= 1 - alpha. The bound is finite-
sample valid (split conformal prediction; Vovk et al. 2005, Angelopoulos & Bates 2021):

1. Encode and decode every calibration image at each condition of a fixed grid
   (0 = the full budget, then increasing targets) and record its l1.
2. For a requested eps, the score of image i is the largest grid condition s_i <= eps such
   that the image meets eps at s_i *and at every smaller condition* (this makes "meets eps"
   a monotone function of the condition even where the model is not); -inf when even the
   full budget misses eps. Conditions above eps are never used: calibration only tightens
   the target. Allowing looser ones saves a few tokens on the calibration photos but does
   not carry over to other photographs (measured: at eps = 0.12 it chose condition 0.3, and
   only 86.7% of photos:test crops then met eps). Every calibrated eps is itself on the
   condition grid, so "no tightening" is always a candidate (an earlier grid lacked it).
3. With n images and j = floor(alpha * (n + 1)), c(eps) is the j-th smallest score. A new
   image misses only if its score falls below it, which by exchangeability has probability
   at most j / (n + 1) <= alpha.

If c(eps) is -inf the guarantee cannot be met with this model (more than alpha of the images
miss eps even with every token); such entries fall back to the full budget and are flagged
``attainable = False``. A requested eps between grid points uses the nearest grid eps
below it, which is conservative. The guarantee is marginal (over images like the
calibration data), not per image; ``verify=True`` in :meth:`Tokenizer.encode` checks each one.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .io import write_json

CALIBRATION_FILE = "calibration.json"
# conditions tried (0 = full budget): steps of 6%, plus the eps values users ask for most
STANDARD_EPSILONS = (0.02, 0.03, 0.05, 0.08, 0.12)
CONDITION_GRID = (0.0, *sorted({*np.round(np.geomspace(0.003, 0.3, 80), 5).tolist(), *STANDARD_EPSILONS}))
# the requested eps values a calibration covers: grid conditions themselves, so that every one
# can keep its own condition (no tightening) when the calibration images do not need any
EPSILON_GRID = tuple(c for c in CONDITION_GRID if 0.01 <= c <= 0.3)


@dataclass
class Calibration:
    alpha: float  # promised miss rate: at least 1 - alpha of the images meet eps
    data: str  # what it was calibrated on
    num_images: int
    epsilons: list[float]  # requested eps grid, ascending
    conditions: list[float]  # condition to encode with, per requested eps (0 = full budget)
    attainable: list[bool]  # False where the full budget itself misses eps on more than alpha

    @property
    def guarantee(self) -> float:
        return 1.0 - self.alpha

    def lookup(self, epsilon: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) requested eps -> (conditions (B,), guaranteed (B,) bool).

        Uses the largest calibrated eps <= the request; below the grid (or where unattainable)
        the full budget is used (condition 0) and the entry is not guaranteed.
        """
        # compared in float32, the precision encode holds eps in: a request of exactly a grid eps
        # (0.08) must find that entry, not the one below it (float32 0.08 < float64 0.08)
        grid = torch.tensor(self.epsilons, dtype=torch.float32)
        idx = torch.searchsorted(grid, epsilon.float().cpu().contiguous(), right=True) - 1  # -1: below the grid
        safe = idx.clamp(min=0)
        cond = torch.tensor(self.conditions, dtype=torch.float32)[safe]
        ok = torch.tensor(self.attainable)[safe] & (idx >= 0)
        return torch.where(ok, cond, 0.0).to(epsilon.device), ok.to(epsilon.device)


def conformal_rank(n: int, alpha: float) -> int:
    """j = floor(alpha (n + 1)): which smallest of n scores is the threshold; ValueError if n is too few."""
    j = math.floor(alpha * (n + 1))
    if j < 1:
        raise ValueError(f"alpha = {alpha} needs at least {math.ceil(1 / alpha) - 1} calibration images, got {n}")
    return j


def conformal_threshold(scores: np.ndarray, alpha: float) -> float:
    """The floor(alpha (n+1))-th smallest score: P(new score >= it) >= 1 - alpha."""
    return float(np.sort(scores)[conformal_rank(len(scores), alpha) - 1])


def scores_for(errors: np.ndarray, conditions: np.ndarray, epsilon: float) -> np.ndarray:
    """errors (C, N): l1 of image n at condition c (ascending, conditions[0] = 0) -> (N,) scores."""
    usable = int(np.searchsorted(conditions, epsilon, side="right"))  # conditions <= eps
    errors, conditions = errors[:usable], conditions[:usable]
    meets_all_below = np.cumprod(errors <= epsilon, axis=0).astype(bool)  # meets at c and every smaller one
    last = meets_all_below.sum(0) - 1  # index of the largest such condition, -1 if none
    return np.where(last >= 0, conditions[np.maximum(last, 0)], -np.inf)


def _share(value) -> float | None:
    """A number strictly between 0 and 1 (Python, numpy or 0-d tensor; not a bool) as a float
    rounded to 7 significant digits, so that float32 0.9 and 0.9 name the same calibration;
    None for anything else."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != torch.bool:
        value = value.item()
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        return None
    value = float(f"{float(value):.7g}")
    return value if 0 < value < 1 else None  # (checked after rounding: 0.99999999 is not a share)


def alpha_problem(alpha) -> str | None:
    """Why ``alpha`` is not a miss rate (None if it is)."""
    return None if _share(alpha) is not None else f"alpha must be a miss rate in (0, 1), e.g. 0.1, got {alpha!r}"


def check_alpha(alpha) -> float:
    """``alpha`` as a float; ValueError saying what is wrong otherwise."""
    if problem := alpha_problem(alpha):
        raise ValueError(problem)
    return _share(alpha)


def check_guarantee(guarantee) -> float:
    """``guarantee`` (= 1 - alpha) as a float; ValueError saying what is wrong otherwise."""
    value = _share(guarantee)
    if value is None:
        raise ValueError(f"guarantee must be a share in (0, 1), e.g. 0.9, got {guarantee!r}")
    return value


def calibrate_errors(errors: np.ndarray, conditions, alpha: float, data: str,
                     epsilons=EPSILON_GRID) -> Calibration:
    """Calibration from a precomputed (C, N) error table (see :func:`calibrate`)."""
    alpha = check_alpha(alpha)
    conditions = np.asarray(conditions, dtype=np.float64)
    if conditions[0] != 0 or np.any(np.diff(conditions) <= 0):
        raise ValueError("conditions must start at 0 and increase")
    chosen, attainable = [], []
    for eps in epsilons:
        c = conformal_threshold(scores_for(errors, conditions, eps), alpha)
        attainable.append(bool(np.isfinite(c)))
        chosen.append(float(c) if np.isfinite(c) else 0.0)
    return Calibration(alpha, data, errors.shape[1], list(epsilons), chosen, attainable)


@torch.no_grad()
def measure_conditions(measure: Callable[[float], torch.Tensor], conditions=CONDITION_GRID,
                       progress: bool = False) -> np.ndarray:
    """measure(condition) -> (N,) l1 of every calibration image encoded at that condition;
    returns the (C, N) error table that :func:`calibrate_errors` reads."""
    bar = tqdm(conditions, desc="calibrating", unit="condition", disable=not progress, dynamic_ncols=True)
    return np.stack([measure(float(c)).double().cpu().numpy() for c in bar])


def promise_p_value(met: int, n: int, guarantee: float) -> float:
    """P(at most ``met`` of ``n`` images meet eps) if each met it with probability ``guarantee``.

    A check of the promise on new data (monitoring): a small value (say < 0.01) says these images
    are not like the calibration images, and the model should be recalibrated on data like them.
    The promise is marginal, also over the draw of the calibration set, so even where it holds
    the share met on a given calibration wavers by about sqrt(alpha (1 - alpha) / n_calibration).
    """
    if not 0 <= met <= n or n < 1:
        raise ValueError(f"need 0 <= met <= n and n >= 1, got met = {met}, n = {n}")
    if guarantee >= 1:
        return 1.0 if met == n else 0.0
    log_p, log_q = math.log(guarantee), math.log1p(-guarantee)
    terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
             for i in range(met + 1)]
    top = max(terms)
    return min(1.0, math.exp(top) * sum(math.exp(t - top) for t in terms))


def save_calibrations(directory: str | Path, calibrations: dict[float, Calibration]) -> Path:
    path = Path(directory) / CALIBRATION_FILE
    write_json(path, {"calibrations": [asdict(c) for _, c in sorted(calibrations.items())]})
    return path


def _calibration_problem(cal: Calibration) -> str | None:
    """Why a calibration read from a file cannot be used (None if it can)."""
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if problem := alpha_problem(cal.alpha):
        return problem
    columns = (cal.epsilons, cal.conditions, cal.attainable)
    if not all(isinstance(c, list) for c in columns) or not cal.epsilons or len({len(c) for c in columns}) > 1:
        return "epsilons, conditions and attainable must be non-empty lists of equal length"
    if not all(number(v) and v >= 0 for v in cal.epsilons + cal.conditions):
        return "epsilons and conditions must be numbers >= 0"
    if any(b <= a for a, b in zip(cal.epsilons, cal.epsilons[1:])):
        return "epsilons must increase"
    if not all(isinstance(v, bool) for v in cal.attainable):
        return "attainable must hold true/false values"
    return None


def load_calibrations(directory: str | Path) -> dict[float, Calibration]:
    """The calibrations stored in ``directory`` (none if it has no calibration file); ValueError
    naming the file if it or one of its entries is malformed."""
    path = Path(directory) / CALIBRATION_FILE
    if not path.is_file():
        return {}
    try:
        cals = [Calibration(**c) for c in json.loads(path.read_text())["calibrations"]]
    except (KeyError, TypeError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a valid calibration file ({exc})") from None
    for i, cal in enumerate(cals):
        problem = _calibration_problem(cal)
        if problem:
            raise ValueError(f"{path}: calibration {i} is not valid: {problem}")
    for cal in cals:  # files written before alphas were rounded may hold float32 noise (0.10000000149...)
        cal.alpha = check_alpha(cal.alpha)
    return {c.alpha: c for c in cals}
