r"""Wilkinson formulas for mixture-of-experts models (built on ``formulaic``).

``MoE.from_formula("y ~ x1 + np.log(x2)", gate="~ x1 + C(region)", n_experts=3, data=df)`` learns a
:class:`Design` from the training frame: the response, the experts' design matrix (the right-hand
side of ``formula``) and the gate's (``gate``, by default the experts' right-hand side; flexmix's
*concomitant* model). Categorical predictors are dummy-coded (treatment contrasts, first level the
reference), transforms such as ``np.log(x)``, ``poly(x, 2)``, ``center(x)`` and interactions work, and
the design's column names become the ``feature`` coords of fits and posteriors.

What the training data taught the design (the levels of every categorical factor, the state of
stateful transforms such as ``poly`` or ``center``) is stored with the formulas, so new data go through
the same coding: a level missing from new data is fine, an unseen level is an error naming the
column. The design is a value (equal designs are equal and hash equal, as the model must be) and is
part of ``model.spec()`` (JSON-safe, no pickles).

Both families always have their own intercepts (``gate_intercept``, ``expert_intercept``), so the
formulas' intercept column is dropped (and a formula without an intercept, ``- 1`` or ``0 +``, is
refused: with full-rank dummies it would duplicate the intercept). The matrix the model's math sees is
the union of the two designs' columns (the experts' first, then the gate's others); the model passes
each family its own columns (:meth:`bayesmoe.MoE.gate_x`, :meth:`bayesmoe.MoE.expert_x`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["Design", "Side", "resolve_data"]

_INTERCEPT = "Intercept"
_SPEC_VERSION = 1


# ----------------------------------------------------------------------------- JSON of learnt state
def _encode(obj: Any) -> Any:
    """Learnt transform state as JSON values (dicts keep non-string keys, arrays their dtype)."""
    if isinstance(obj, Mapping):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in obj.items()]}
    if isinstance(obj, np.ndarray):
        return {"__array__": obj.tolist(), "dtype": str(obj.dtype)}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    if obj is None or isinstance(obj, (str, int, float, bool)):
        return obj
    raise TypeError(f"cannot store formula state of type {type(obj).__name__} in a model spec")


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__dict__" in obj:
            return {_decode(k): _decode(v) for k, v in obj["__dict__"]}
        if "__array__" in obj:
            return np.asarray(obj["__array__"], dtype=obj["dtype"])
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _frame(data: Any, name: str):
    """``data`` as a pandas DataFrame (a DataFrame, or a dict of columns)."""
    import pandas as pd  # noqa: PLC0415

    if isinstance(data, pd.DataFrame):
        return data
    if isinstance(data, Mapping):
        try:
            return pd.DataFrame(dict(data))
        except (TypeError, ValueError) as err:
            raise ValueError(f"`{name}` must be a pandas DataFrame or a dict of equal-length columns: "
                             f"{err}") from err
    raise ValueError(f"`{name}` must be a pandas DataFrame (or a dict of columns), got "
                     f"{type(data).__name__}")


def _check_variables(df, variables: tuple[str, ...], formula: str, name: str) -> None:
    missing = [v for v in variables if v not in df.columns]
    if missing:
        raise ValueError(f"`{name}` lacks the column(s) {missing} used by the formula {formula!r}; it "
                         f"has {[str(c) for c in df.columns]}")


def _unseen_levels(df, state: dict, variables: tuple[str, ...]) -> list[tuple[str, list]]:
    """(column, unseen values) for data columns of categorical factors with values outside the
    training levels."""
    out = []
    for factor, (kind, cats) in state.items():
        if kind != "categorical" or cats is None:
            continue
        tokens = set(re.findall(r"[A-Za-z_][A-Za-z0-9_.]*", factor)) | {factor}
        known = set(cats)
        for col in (v for v in variables if v in tokens):
            seen = set(df[col].dropna().unique().tolist())
            bad = sorted((v for v in seen if v not in known), key=str)
            if bad:
                out.append((col, bad))
    return out


# ----------------------------------------------------------------------------- one side of a formula
@dataclasses.dataclass(frozen=True)
class Side:
    """One right-hand side (or a transformed response) materialised on training data.

    :param formula: the formula text as formulaic normalises it (e.g. ``1 + x1 + C(region)``).
    :param state: the learnt state, canonical JSON: ``{"encoder": {factor: [kind, levels]},
        "transform": {...}}``.
    :param columns: the design's column names (the intercept column excluded).
    :param variables: the data columns the formula reads.
    """

    formula: str
    state: str
    columns: tuple[str, ...]
    variables: tuple[str, ...]

    @classmethod
    def learn(cls, formula: Any, df, what: str, *, intercept: bool = True) -> Side:
        """Materialise ``formula`` (a formulaic formula or its text) on the training frame ``df`` and
        keep what it learnt.

        :param formula: a one-sided formula (``"~ x1 + C(region)"``) or a formulaic ``Formula``.
        :param df: the training DataFrame.
        :param what: what the formula is for (``"experts"``, ``"gate"``), named in error messages.
        :param intercept: keep an intercept column (False: drop it).
        """
        from formulaic import model_matrix  # noqa: PLC0415
        from formulaic.errors import FormulaicError  # noqa: PLC0415

        try:
            mm = model_matrix(formula, df, na_action="raise", ensure_full_rank=True)
        except FormulaicError as err:
            raise ValueError(f"cannot build the {what} design {formula!r} from `data`: {err}") from err
        except ValueError as err:  # NaN in a column (na_action="raise")
            raise ValueError(f"cannot build the {what} design {formula!r} from `data`: {err}") from err
        spec = mm.model_spec
        cols = [str(c) for c in mm.columns]
        if intercept:
            if _INTERCEPT not in cols:
                raise ValueError(f"the {what} formula {formula!r} has no intercept ('- 1' or '0 +'): the "
                                 "gate and the experts always have their own intercepts, so remove it")
            cols = [c for c in cols if c != _INTERCEPT]
            if not cols:
                raise ValueError(f"the {what} formula {formula!r} has no predictor: give at least one "
                                 "(a model without inputs is not supported)")
        variables = tuple(sorted(str(v) for v in spec.variables if getattr(v, "source", None) == "data"))
        encoder = {str(k): [v[0].value, None if "categories" not in v[1] else
                            [_encode(c) for c in v[1]["categories"]]]
                   for k, v in spec.encoder_state.items()}
        state = json.dumps({"encoder": encoder, "transform": _encode(spec.transform_state)},
                           sort_keys=True)
        text = str(spec.formula) if intercept else f"{spec.formula} - 1"
        return cls(text, state, tuple(cols), variables)

    @functools.cached_property
    def _spec(self):
        from formulaic import ModelSpec  # noqa: PLC0415
        from formulaic.parser.types import Factor  # noqa: PLC0415

        st = json.loads(self.state)
        encoder = {k: (Factor.Kind(kind), {} if cats is None else {"categories": cats})
                   for k, (kind, cats) in st["encoder"].items()}
        return ModelSpec(formula=self.formula, materializer="pandas", ensure_full_rank=True,
                         na_action="raise", transform_state=_decode(st["transform"]),
                         encoder_state=encoder)

    def matrix(self, df, name: str) -> np.ndarray:
        """The design matrix of new data ``df`` (the learnt coding), float (n, p).

        :param df: the DataFrame of new data, with the variables the formula uses.
        :param name: the argument name reported in error messages.
        """
        from formulaic.errors import FormulaicError  # noqa: PLC0415

        _check_variables(df, self.variables, self.formula, name)
        unseen = _unseen_levels(df, json.loads(self.state)["encoder"], self.variables)
        if unseen:
            col, bad = unseen[0]
            raise ValueError(f"`{name}` column {col!r} has level(s) {bad[:5]} not seen in the training "
                             f"data (the formula {self.formula!r} was learnt without them)")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                mm = self._spec.get_model_matrix(df)
            except (FormulaicError, ValueError) as err:
                raise ValueError(f"cannot apply the formula {self.formula!r} to `{name}`: {err}") from err
        for w in caught:
            if "categories outside" in str(w.message):
                raise ValueError(f"`{name}` has categorical level(s) not seen in the training data: "
                                 f"{w.message}")
        cols = [str(c) for c in mm.columns]
        want = [c for c in cols if c != _INTERCEPT]
        if tuple(want) != self.columns:
            raise ValueError(f"the formula {self.formula!r} gives the columns {want} on `{name}`, not the "
                             f"training design's {list(self.columns)}")
        out = np.asarray(mm[list(self.columns)].to_numpy(), dtype=float)
        return out

    def spec(self) -> dict:
        return {"formula": self.formula, "state": json.loads(self.state), "columns": list(self.columns),
                "variables": list(self.variables)}

    @classmethod
    def from_spec(cls, spec: Mapping) -> Side:
        """Rebuild a side from :meth:`spec`'s dict.

        :param spec: the dict written by :meth:`spec`.
        """
        return cls(str(spec["formula"]), json.dumps(spec["state"], sort_keys=True),
                   tuple(str(c) for c in spec["columns"]), tuple(str(v) for v in spec["variables"]))


# ----------------------------------------------------------------------------- the model's design
@dataclasses.dataclass(frozen=True)
class Design:
    """The learnt designs of a formula model: response, experts' side and gate's side.

    :param expert: the experts' right-hand side (:class:`Side`).
    :param gate: the gate's right-hand side.
    :param response: the response's name (the formula's left-hand side), or None.
    :param response_side: for a transformed response (``np.log(y) ~ ...``), its one-column side;
        None when the response is a data column (read as is: class labels are kept).
    """

    expert: Side
    gate: Side
    response: str | None = None
    response_side: Side | None = None

    @classmethod
    def learn(cls, formula: str, gate: str | None, data: Any) -> Design:
        """Learn the design of ``formula`` (``"y ~ x1 + x2"``) and ``gate`` (``"~ x1 + C(region)"``
        or None for the experts' right-hand side) from the training frame ``data``."""
        from formulaic import Formula  # noqa: PLC0415
        from formulaic.errors import FormulaicError  # noqa: PLC0415

        if not isinstance(formula, str):
            raise ValueError(f"`formula` must be a string such as 'y ~ x1 + x2', got {formula!r}")
        if gate is not None and not isinstance(gate, str):
            raise ValueError(f"`gate` must be a one-sided formula string such as '~ x1 + C(region)' or "
                             f"None, got {gate!r}")
        df = _frame(data, "data")
        try:
            parsed = Formula(formula)
        except FormulaicError as err:
            raise ValueError(f"`formula` {formula!r} is not a valid formula: {err}") from err
        if not hasattr(parsed, "lhs"):
            raise ValueError(f"`formula` must name the response on the left, e.g. 'y ~ x1 + x2', got "
                             f"{formula!r}")
        lhs = str(parsed.lhs)
        response_side = None
        if lhs not in df.columns:
            response_side = Side.learn(parsed.lhs, df, "response", intercept=False)
            if len(response_side.columns) != 1:
                raise ValueError(f"the response {lhs!r} gives {len(response_side.columns)} columns "
                                 f"{list(response_side.columns)}; name one data column (class labels are "
                                 "read as they are) or a one-column numeric transform such as np.log(y)")
        expert = Side.learn(parsed.rhs, df, "experts'")
        if gate is None:
            gate_side = expert
        else:
            try:
                g = Formula(gate)
            except FormulaicError as err:
                raise ValueError(f"`gate` {gate!r} is not a valid formula: {err}") from err
            if hasattr(g, "lhs"):
                raise ValueError(f"`gate` must be one-sided ('~ x1 + C(region)'), got {gate!r}")
            gate_side = Side.learn(g, df, "gate")
        return cls(expert, gate_side, lhs, response_side)

    # ------------------------------------------------------------------ columns
    @property
    def columns(self) -> tuple[str, ...]:
        """The union of the two designs' columns: the experts', then the gate's others."""
        return self.expert.columns + tuple(c for c in self.gate.columns if c not in self.expert.columns)

    @property
    def split(self) -> bool:
        """Whether the gate and the experts see different columns."""
        return self.gate.columns != self.expert.columns

    @property
    def gate_index(self) -> tuple[int, ...]:
        cols = self.columns
        return tuple(cols.index(c) for c in self.gate.columns)

    @property
    def expert_index(self) -> tuple[int, ...]:
        return tuple(range(len(self.expert.columns)))

    # ------------------------------------------------------------------ data
    def x(self, data: Any, name: str = "data") -> np.ndarray:
        """The model's input matrix of ``data`` (n, d): the union design, columns :attr:`columns`.

        :param data: a DataFrame (or a mapping of columns) with the formulas' variables.
        :param name: the argument name reported in error messages.
        """
        df = _frame(data, name)
        xe = self.expert.matrix(df, name)
        if not self.split:
            return xe
        xg = self.gate.matrix(df, name)
        extra = [i for i, c in enumerate(self.gate.columns) if c not in self.expert.columns]
        return np.concatenate([xe, xg[:, extra]], axis=1)

    def y(self, data: Any, name: str = "data") -> Any:
        """The response of ``data``: the column as is (labels kept), or its transform.

        :param data: a DataFrame (or a mapping of columns) holding the response.
        :param name: the argument name reported in error messages.
        """
        df = _frame(data, name)
        if self.response_side is not None:
            return self.response_side.matrix(df, name)[:, 0]
        if self.response not in df.columns:
            raise ValueError(f"`{name}` lacks the response column {self.response!r}; it has "
                             f"{[str(c) for c in df.columns]}")
        return df[self.response]

    def has_response(self, data: Any) -> bool:
        """Whether ``data`` holds what the response needs."""
        df = _frame(data, "data")
        if self.response_side is not None:
            return all(v in df.columns for v in self.response_side.variables)
        return self.response in df.columns

    # ------------------------------------------------------------------ specs
    def formula_text(self) -> str:
        rhs = self.expert.formula
        out = f"{self.response} ~ {rhs}"
        return out if not self.split else f"{out} | gate: ~ {self.gate.formula}"

    def spec(self) -> dict:
        """A JSON-able description (formulas and what they learnt); see :meth:`from_spec`."""
        return {"version": _SPEC_VERSION, "response": self.response, "expert": self.expert.spec(),
                "gate": self.gate.spec(),
                "response_side": None if self.response_side is None else self.response_side.spec()}

    @classmethod
    def from_spec(cls, spec: Mapping) -> Design:
        """Rebuild a design from :meth:`spec`'s dict (as saved with fits and posteriors).

        :param spec: the dict written by :meth:`spec`.
        """
        if not isinstance(spec, Mapping) or "expert" not in spec or "gate" not in spec:
            raise ValueError(f"a design spec must be a dict with 'expert' and 'gate', got {spec!r}")
        rs = spec.get("response_side")
        return cls(Side.from_spec(spec["expert"]), Side.from_spec(spec["gate"]), spec.get("response"),
                   None if rs is None else Side.from_spec(rs))


def resolve_data(model: Any, x: Any, y: Any, data: Any, *, need_y: bool = True) -> tuple[Any, Any]:
    """``(x, y)`` for a workflow called with ``data=`` (a frame read through the model's formula) or
    with ``x, y`` (returned as they are).

    :param model: the model (a formula :class:`bayesmoe.MoE` when ``data`` is given).
    :param x: the inputs, or None with ``data``.
    :param y: the responses, or None with ``data``.
    :param data: a pandas DataFrame, or None.
    :param need_y: whether the response must be in ``data``.
    """
    if data is None:
        return x, y
    if x is not None or y is not None:
        raise ValueError("pass either `data` (a DataFrame read through the model's formula) or `x` and "
                         "`y`, not both")
    design = getattr(model, "design", None)
    if design is None:
        raise ValueError("`data=` needs a formula model (bm.MoE.from_formula(...)); this model takes "
                         "arrays x and y")
    df = _frame(data, "data")
    if need_y or design.has_response(df):
        return df, design.y(df)
    return df, None
