"""The privacy model of one DP-RDM query.

A DP-RDM query (Lebensold et al. 2024, arXiv 2403.14421, §3 and methods note §4.1–4.3) releases

    M(D) = mean_k( kNN(q̂, Poisson_q(D)) ) + N(0, σ² I_d)

over unit-norm records. Under add/remove-one adjacency the mean of k unit vectors moves by at most
Δ₂ = 2/k (a new record can displace only the current k-th neighbour, and two unit vectors are at
most 2 apart), so the Gaussian noise has multiplier z = σ/Δ₂ = σ·k/2 (the authors' code:
``GS = 2 / knn``; ``noise_multiplier = sigma / GS``). With the fresh Poisson subsample of rate q
each query is one Poisson-subsampled Gaussian mechanism (Mironov, Talwar & Zhang 2019), which is
exactly what every accountant in :mod:`privdiff.accounting.accountants` bounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import dp_accounting

from privdiff.errors import check_in_range, check_int, check_positive


@dataclass(frozen=True, slots=True)
class DPRDMQuery:
    """One privatised retrieval: Poisson subsample, top-k mean, Gaussian noise.

    Attributes:
        sigma: σ, the standard deviation of the Gaussian noise added to the mean of the k
            retrieved unit vectors (in embedding units, not in units of the sensitivity).
        sample_rate: q, the Poisson subsampling probability of each private record, in (0, 1].
        k: the number of nearest neighbours averaged, an integer ≥ 1.

    Invalid values raise :class:`~privdiff.errors.InvalidParameter` naming the value and its
    allowed range, so a bad query can never reach a ledger.
    """

    sigma: float
    sample_rate: float
    k: int

    def __post_init__(self) -> None:
        # Coerce once here so equal queries hash equal (0.2 and numpy.float64(0.2) group together
        # in a ledger) and so nothing downstream needs to re-validate.
        object.__setattr__(self, "sigma", check_positive("sigma", self.sigma))
        object.__setattr__(self, "sample_rate", check_in_range("sample_rate", self.sample_rate, 0.0, 1.0))
        object.__setattr__(self, "k", check_int("k", self.k, minimum=1))

    @property
    def sensitivity(self) -> float:
        """Δ₂ = 2/k: L2 sensitivity of the mean of k unit vectors (methods note §4.2)."""
        return 2.0 / self.k

    @property
    def noise_multiplier(self) -> float:
        """z = σ/Δ₂ = σ·k/2 (methods note §4.3; authors' code ``sigma / GS``)."""
        return self.sigma * self.k / 2.0

    def dp_event(self, count: int = 1) -> dp_accounting.DpEvent:
        """The dp-accounting record of ``count`` adaptive repetitions of this query.

        ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``, self-composed ``count`` times. The
        neighbouring relation (add/remove one) is chosen by the accountant that consumes it.
        """
        count = check_int("count", count, minimum=0)
        event = dp_accounting.PoissonSampledDpEvent(
            self.sample_rate, dp_accounting.GaussianDpEvent(self.noise_multiplier)
        )
        return dp_accounting.SelfComposedDpEvent(event, count)

    def as_dict(self) -> dict[str, float | int]:
        return {
            "sigma": self.sigma,
            "sample_rate": self.sample_rate,
            "k": self.k,
            "noise_multiplier": self.noise_multiplier,
            "sensitivity": self.sensitivity,
        }


def check_delta(delta: float) -> float:
    """δ must lie strictly between 0 and 1 (δ = 1/N by default, methods note §4.5)."""
    return check_in_range("delta", delta, 0.0, 1.0, high_inclusive=False)


def check_epsilon(name: str, epsilon: float) -> float:
    """A target or budget ε: finite and > 0."""
    return check_positive(name, epsilon)


def default_delta(dataset_size: int) -> float:
    """δ = 1/N, the authors' default (``dp_delta_from_config``; methods note §4.5).

    §8 of the methods note warns this is weak (common practice is δ ≪ 1/N); callers should let
    users override it.
    """
    n = check_int("dataset_size", dataset_size, minimum=2)
    return 1.0 / n
