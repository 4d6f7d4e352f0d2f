"""Typed column expressions: derived event columns and request-time features, as data.

An expression is text in `params.yaml` (and, for request-time features, in a model version's
lineage tags), so it must stay data: it is parsed with `ast` and walked by a small
interpreter over pandas columns, never `eval`ed or compiled, and `DataFrame.eval` (which allows
attribute access and method calls) is not used. What it may hold: column names, numbers,
strings, `+ - * / // % **`, comparisons, `and or not`, `a if cond else b`, and the functions
in `FUNCTIONS`. Anything else (attributes, subscripts, lambdas, keywords...) is refused when
the configuration is loaded, naming the construct.

`derive` turns the raw result into the declared dtype with the declared missing-value
behaviour: a row is missing when a column the expression reads is missing there, or the result
is missing or not finite (0/0, x/0, log(-1)); `on_missing` then keeps it missing
(`propagate`), fails naming the column, expression and rows (`error`), or uses `fill_value`.
"""

from __future__ import annotations

import ast
import operator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # numpy and pandas are imported where an expression is evaluated: the
    import pandas as pd  # config that declares expressions is read at DAG parse time

DTYPES = {"float64": "float64", "int64": "Int64", "bool": "boolean", "string": "string"}
MAX_LENGTH = 1000  # characters: deeper nesting than anyone writes by hand is refused


def _timestamps(x: Any, naive_is_utc: bool) -> pd.Series:
    """Timestamps (tz-aware datetimes, or ISO text with an offset) as UTC; naive values are
    refused unless `naive_is_utc` (the expression said `utc(...)`)."""
    import pandas as pd

    from pipelines.core.dates import parse_utc

    s = x if isinstance(x, pd.Series) else pd.Series([x])
    if naive_is_utc and not isinstance(s.dtype, pd.DatetimeTZDtype):
        return pd.to_datetime(s, utc=True, format="ISO8601")
    try:
        return parse_utc(s, "a timestamp")
    except ValueError as exc:
        raise ValueError(f"{exc}; wrap a column that holds UTC times without an offset in "
                         "utc(...)") from None


def _days_between(start: Any, end: Any) -> pd.Series:
    import pandas as pd

    return (_timestamps(end, False) - _timestamps(start, False)) / pd.Timedelta(days=1)


def _where(cond: Any, a: Any, b: Any) -> Any:
    import numpy as np
    import pandas as pd

    idx = next((v.index for v in (cond, a, b) if isinstance(v, pd.Series)), None)
    out = np.where(np.asarray(cond, dtype=bool), a, b)
    return pd.Series(out, index=idx) if idx is not None else out


def _numpy(name: str) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        import numpy as np

        return getattr(np, name)(*args)

    return call


FUNCTIONS: dict[str, tuple[int, Callable[..., Any]]] = {  # name -> (arguments, function)
    **{name: (1, _numpy(name)) for name in ("abs", "sqrt", "log", "log1p", "exp", "floor",
                                            "ceil", "round")},
    "minimum": (2, _numpy("minimum")), "maximum": (2, _numpy("maximum")),
    "clip": (3, _numpy("clip")),
    "where": (3, _where),
    "utc": (1, lambda x: _timestamps(x, True)),  # timestamps; naive values declared UTC
    "days_between": (2, _days_between),  # (end - start) in days, both timezone-aware
}

_BINARY = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.Pow: operator.pow}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
            ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
_ALLOWED = ("column names, numbers, strings, + - * / // % **, comparisons, and/or/not, "
            "'a if cond else b' and the functions " + ", ".join(sorted(FUNCTIONS)))


@dataclass(frozen=True)
class Expression:
    """A parsed, checked expression; `names` are the columns it reads."""

    text: str
    names: tuple[str, ...] = field(init=False)
    _tree: ast.Expression = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.text, str) or not self.text.strip():
            raise ValueError("an expression must be non-empty text")
        if len(self.text) > MAX_LENGTH:
            raise ValueError(f"expression longer than {MAX_LENGTH} characters")
        try:
            tree = ast.parse(self.text.strip(), mode="eval")
        except SyntaxError as exc:
            raise ValueError(f"expression {self.text!r} is not valid: {exc.msg}") from None
        names: list[str] = []
        functions = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        for node in ast.walk(tree):
            if id(node) not in functions:  # a called name is checked with its call
                self._check(node, names)
        object.__setattr__(self, "names", tuple(dict.fromkeys(names)))
        object.__setattr__(self, "_tree", tree)

    def _check(self, node: ast.AST, names: list[str]) -> None:
        ok = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.BoolOp, ast.Compare, ast.IfExp,
              ast.Call, ast.Name, ast.Constant, ast.Load, ast.And, ast.Or, ast.Not, ast.USub,
              ast.UAdd, *_BINARY, *_COMPARE)
        if not isinstance(node, ok):
            raise ValueError(f"expression {self.text!r}: {type(node).__name__} is not allowed "
                             f"(allowed: {_ALLOWED})")
        if isinstance(node, ast.Constant) and not isinstance(node.value, (bool, int, float, str)):
            raise ValueError(f"expression {self.text!r}: constant {node.value!r} is not allowed "
                             "(numbers, strings, True, False)")
        if isinstance(node, ast.Call):
            fn = node.func.id if isinstance(node.func, ast.Name) else None
            if fn not in FUNCTIONS or node.keywords:
                raise ValueError(f"expression {self.text!r}: only the functions "
                                 f"{', '.join(sorted(FUNCTIONS))} may be called, with "
                                 "positional arguments")
            if len(node.args) != FUNCTIONS[fn][0]:
                raise ValueError(f"expression {self.text!r}: {fn}() takes "
                                 f"{FUNCTIONS[fn][0]} arguments")
        elif isinstance(node, ast.Name):
            names.append(node.id)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult) and any(
                isinstance(s, ast.Constant) and isinstance(s.value, str)
                for s in (node.left, node.right)):
            raise ValueError(f"expression {self.text!r}: a string cannot be multiplied")

    def evaluate(self, frame: pd.DataFrame) -> pd.Series:
        """The raw result on `frame` (a Series aligned with it; a constant is broadcast)."""
        import pandas as pd

        missing = [n for n in self.names if n not in frame.columns]
        if missing:
            raise KeyError(f"no column {missing} (columns: {list(frame.columns)})")
        out = self._eval(self._tree.body, frame)
        if not isinstance(out, pd.Series):
            out = pd.Series([out] * len(frame), index=frame.index)
        return out

    def _eval(self, node: ast.AST, frame: pd.DataFrame) -> Any:
        import pandas as pd

        ev = lambda n: self._eval(n, frame)  # noqa: E731 - a local shorthand
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, ast.Name):
            col = frame[node.id]
            return col.astype(object) if isinstance(col.dtype, pd.StringDtype) else col
        if isinstance(node, ast.BinOp):
            left, right = ev(node.left), ev(node.right)
            if isinstance(node.op, ast.Pow) and not isinstance(left, pd.Series) \
                    and not isinstance(right, pd.Series):
                return float(left) ** float(right)  # no unbounded integer powers of constants
            return _BINARY[type(node.op)](left, right)
        if isinstance(node, ast.UnaryOp):
            value = ev(node.operand)
            if isinstance(node.op, ast.Not):
                return ~_bool(value) if isinstance(value, pd.Series) else not value
            return -value if isinstance(node.op, ast.USub) else +value
        if isinstance(node, ast.BoolOp):
            values = [_bool(ev(v)) for v in node.values]
            out = values[0]
            for v in values[1:]:
                out = (out & v) if isinstance(node.op, ast.And) else (out | v)
            return out
        if isinstance(node, ast.Compare):
            out, left = True, ev(node.left)
            for op, comp in zip(node.ops, node.comparators):
                right = ev(comp)
                out = out & _COMPARE[type(op)](left, right)
                left = right
            return out
        if isinstance(node, ast.IfExp):
            return _where(ev(node.test), ev(node.body), ev(node.orelse))
        if isinstance(node, ast.Call):
            return FUNCTIONS[node.func.id][1](*[ev(a) for a in node.args])
        raise ValueError(f"expression {self.text!r}: {type(node).__name__} is not allowed")


def _bool(value: Any) -> Any:
    import pandas as pd

    return value.astype(bool) if isinstance(value, pd.Series) else bool(value)


def check_fill(fill_value: Any, dtype: str, what: str) -> None:
    """`fill_value` must be a value of `dtype` (raises naming `what`)."""
    ok = {"float64": isinstance(fill_value, (int, float)) and not isinstance(fill_value, bool),
          "int64": isinstance(fill_value, int) and not isinstance(fill_value, bool),
          "bool": isinstance(fill_value, bool), "string": isinstance(fill_value, str)}[dtype]
    if not ok:
        raise ValueError(f"{what}: fill_value {fill_value!r} is not a {dtype} value")


def as_text(column: pd.Series) -> pd.Series:
    """`column.astype("string")`: the same values and dtype, without pandas' machinery around
    the conversion (for the join keys and text columns of a request's few rows it cost 3x
    the conversion: 0.33-0.38 against 0.10-0.12 ms for three 1-row columns, run 20 ms
    apart). A numpy column goes through the conversion astype runs for it
    (`_from_sequence`), a column already of that dtype is returned as it is, anything else
    through astype."""
    import numpy as np
    import pandas as pd

    dtype = pd.StringDtype()
    if column.dtype == dtype:
        return column
    if isinstance(column.dtype, np.dtype):
        return pd.Series(dtype.construct_array_type()._from_sequence(
            column.to_numpy(), dtype=dtype, copy=True), index=column.index, name=column.name,
            copy=False)
    return column.astype(dtype)


def cast(values: pd.Series, dtype: str, what: str) -> pd.Series:
    """`values` (missing already nulled) as `dtype`: float64, Int64, boolean or string."""
    import numpy as np
    import pandas as pd

    if dtype == "string":
        return as_text(values)
    if values.dtype.kind in "iufb" and dtype in ("float64", "int64"):  # numbers already: numpy
        numbers = values.to_numpy(dtype=np.float64, na_value=np.nan)  # (no per-value checks)
        if dtype == "float64":
            return pd.Series(numbers, index=values.index, name=values.name)
        bad = ~np.isnan(numbers) & (numbers != np.floor(numbers))
        if bad.any():
            raise TypeError(f"{what}: declared int64 but gives non-integer values, e.g. "
                            f"{float(numbers[bad][0])!r} (row {values.index[bad.argmax()]})")
        return pd.Series(numbers, index=values.index, name=values.name).astype("Int64")
    present = values.dropna()
    if not len(present):  # nothing to judge: all missing
        return pd.Series([None] * len(values), index=values.index, dtype=object).astype(
            DTYPES[dtype])
    kind = present.dtype.kind
    if kind in "mM" or (kind == "O" and len(present) and not present.map(
            lambda v: isinstance(v, (bool, int, float, np.number, np.bool_))).all()):
        example = present.iloc[0]
        raise TypeError(f"{what}: gives {type(example).__name__} values (e.g. {example!r}), "
                        f"not {dtype}" + ("; use days_between() for a number of days"
                                          if isinstance(example, pd.Timedelta) else ""))
    if dtype == "bool":
        if kind not in "b" and not (kind == "O" and present.map(
                lambda v: isinstance(v, (bool, np.bool_))).all()):
            raise TypeError(f"{what}: gives {present.dtype} values, not bool")
        return values.astype("boolean")
    if kind in "iufb":
        numbers = values.astype("float64")
    else:
        numbers = pd.to_numeric(values.astype(object).where(values.notna(), np.nan),
                                errors="raise").astype("float64")
    if dtype == "int64":
        bad = numbers.notna() & (numbers != np.floor(numbers))
        if bad.any():
            raise TypeError(f"{what}: declared int64 but gives non-integer values, e.g. "
                            f"{float(numbers[bad].iloc[0])!r} (row {bad.idxmax()})")
        return numbers.astype("Int64")
    return numbers


def missing_mask(values: pd.Series) -> pd.Series:
    """Missing or (for numbers) not finite."""
    import numpy as np

    mask = values.isna()
    if values.dtype.kind == "f":
        mask |= ~np.isfinite(values.to_numpy(dtype="float64", na_value=np.nan))
    elif values.dtype.kind == "O":
        mask |= values.map(lambda v: isinstance(v, float) and not np.isfinite(v)).astype(bool)
    return mask


def apply_missing(values: pd.Series, missing: pd.Series, dtype: str, on_missing: str,
                  fill_value: Any, what: str) -> pd.Series:
    """`values` as `dtype` with the rows in `missing` nulled, filled or refused (`on_missing`)."""
    missing = missing.to_numpy(dtype=bool)
    if missing.any() and on_missing == "error":
        rows = list(values.index[missing][:5])
        raise ValueError(f"{what}: {int(missing.sum())} rows with a missing input or a missing "
                         f"or non-finite result (on_missing: error), e.g. rows {rows}")
    out = cast(values.where(~missing) if missing.any() else values, dtype, what)
    if missing.any() and on_missing == "fill":
        out = out.where(~missing, fill_value).astype(DTYPES[dtype])
    return out


def derive(expr: Expression, frame: pd.DataFrame, dtype: str, on_missing: str,
           fill_value: Any, what: str) -> pd.Series:
    """The expression on `frame` as `dtype` with the declared missing-value behaviour; any
    failure is a ValueError naming `what` (the column) and the expression."""
    import pandas as pd

    label = f"{what} = {expr.text!r}"
    try:
        raw = expr.evaluate(frame)
        inputs_missing = frame[list(expr.names)].isna().any(axis=1) if expr.names else \
            pd.Series(False, index=frame.index)
        return apply_missing(raw, inputs_missing | missing_mask(raw), dtype, on_missing,
                             fill_value, label)
    except (TypeError, KeyError, ValueError, ArithmeticError) as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(label) else f"{label} failed: {msg}") from None
