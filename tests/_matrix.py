"""The generated combination matrix: every gate x every expert family x degree x d x K x workflow option.

The levels are derived from declarations, not listed by hand:
- the families are the concrete ``Gate``/``Expert`` classes of ``bm.gates.__all__`` and
  ``bm.experts.__all__``; a required dataclass field takes its value from ``FIELD_VALUES`` and a field
  named in ``VARIANTS`` adds one family level per value (a new family or a new option of an existing
  field joins the matrix by itself; a new required field fails ``test_every_family_is_in_the_matrix``
  until it is given a value here);
- the options are ``OPTIONS``: each a way of fitting (``fit_mle`` with L-BFGS, EM, Adam; ``fit_map``;
  an L1 penalty; formula input; rows sharded over 2 forced host devices).

The full product (thousands of cells, each a new compiled program) cannot run in a test suite, so the
cases form a *covering array* (strength 2) built greedily from a fixed seed: every pair of levels of any
two factors that can go together appears in at least one case. ``validity`` names the combinations that cannot
exist (e.g. a formula for a vector response) with the reason.
"""

from __future__ import annotations

import dataclasses
import inspect
import itertools

import numpy as np

import bayesmoe as bm

# values of required dataclass fields (by field name), and extra levels of option fields
FIELD_VALUES = {"n_classes": 3, "n_outputs": 2}
VARIANTS = {"transform": ("tanh", "sigmoid"), "covariance": ("diag", "full")}
OPTIONS = ("lbfgs", "em", "adam", "map", "penalty", "formula", "devices")
DEGREES = (1, 2, 3)
DIMS = (1, 2, 3)
KS = (1, 2, 3)
SEED = 20261207


def _concrete(module, base) -> list[type]:
    out = []
    for name in module.__all__:
        obj = getattr(module, name)
        if inspect.isclass(obj) and issubclass(obj, base) and obj is not base and not inspect.isabstract(obj):
            out.append(obj)
    return out


def _instances(cls) -> list:
    """One instance per variant of ``cls``: required fields from FIELD_VALUES, variant fields from
    VARIANTS (only values the class accepts); the degree is set later (a factor of its own)."""
    fields = {f.name: f for f in dataclasses.fields(cls)} if dataclasses.is_dataclass(cls) else {}
    kwargs = {}
    for name, f in fields.items():
        if name in FIELD_VALUES:
            kwargs[name] = FIELD_VALUES[name]
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and f.init:
            raise KeyError(f"{cls.__name__}.{name}: a required field without a value in FIELD_VALUES")
    variants = [kwargs]
    for name, values in VARIANTS.items():
        if name in fields:
            variants = [{**v, name: val} for v in variants for val in values]
    return [cls(**v) for v in variants]


def gate_levels() -> list:
    return [g for cls in _concrete(bm.gates, bm.Gate) for g in _instances(cls)]


def expert_levels() -> list:
    """Expert instances at degree 1 (``with_degree`` sets the factor's degree)."""
    return [e for cls in _concrete(bm.experts, bm.Expert) for e in _instances(cls)]


def with_degree(expert, degree: int):
    return dataclasses.replace(expert, degree=degree) if hasattr(expert, "degree") else expert


def validity(gate, expert, degree, d, K, option) -> str | None:
    """Why a combination cannot exist, or None when it can."""
    if degree > 1 and not hasattr(expert, "degree"):
        return "the expert has no polynomial degree"
    if option == "formula" and expert.y_shape() != ():
        return "formulas have one response column"
    if option == "penalty":
        slopes = [p for f in (gate, expert) for p in f.param_table() if p.affine == "coef"]
        if not slopes:
            return "no slope to penalise"
        if K == 1 and not any(p.affine == "coef" for p in expert.param_table()):
            return "no free slope with one expert"
    return None


@dataclasses.dataclass(frozen=True)
class Case:
    gate: object
    expert: object
    degree: int
    d: int
    K: int
    option: str

    @property
    def id(self) -> str:
        return f"{self.gate!r}-{with_degree(self.expert, self.degree)!r}-d{self.d}-K{self.K}-{self.option}"

    @property
    def model(self):
        return bm.MoE(self.gate, with_degree(self.expert, self.degree), self.K)


def _key(level) -> str:
    return repr(level)


def _requirements(row: dict) -> set:
    """What one full row covers: every pair of its levels."""
    return {((a, _key(row[a])), (b, _key(row[b]))) for a, b in itertools.combinations(sorted(row), 2)}


def cases() -> list[Case]:
    """The covering array: greedy set cover over every valid row of the full product (each step takes
    the row covering most uncovered pairs; a fixed seed breaks ties), so that every pair of levels
    that occurs in a valid row is in some case. Deterministic."""
    factors = {"gate": gate_levels(), "expert": expert_levels(), "degree": list(DEGREES),
               "d": list(DIMS), "K": list(KS), "option": list(OPTIONS)}
    rows = []
    for combo in itertools.product(*factors.values()):
        row = dict(zip(factors, combo, strict=True))
        if validity(**row) is None:
            rows.append(row)
    reqs = [_requirements(r) for r in rows]
    need = set().union(*reqs)
    rng = np.random.default_rng(SEED)
    order = rng.permutation(len(rows))
    out = []
    while need:
        best = max(order, key=lambda i: len(reqs[i] & need))
        need -= reqs[best]
        out.append(Case(**rows[best]))
    return out
