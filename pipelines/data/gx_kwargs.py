"""Great Expectations' kwargs lookups, with the expectation's configuration built once per lookup.

GX 1.x rebuilds an expectation's whole `configuration` (a pydantic `.dict()`, a serialised copy
of every field) for each key it looks up in it: `_get_domain_kwargs` and `_get_success_kwargs`
once per domain or success key, `_get_success_kwarg` twice per key, and validating one batch
makes them thousands of times (12,917 for a day's two tables here, a third of the validation's
time under a profiler). `apply` replaces those three methods of `Expectation`, and
`_get_runtime_kwargs`, which calls them, with ones that build the configuration once per lookup
and find every key in that: the same values in the same order (the configuration is a pure
function of the expectation's fields, which nothing changes during a lookup), checked against
GX's own methods for every expectation of this project's suites in
`tests/component/test_validation.py`.

Only for the GX versions the replacements were read against (`VERIFIED`): another version keeps
its own methods (`apply` returns False), and that test fails until the new version's methods
have been read and added here.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("great_expectations.expectations.expectation")  # as GX logs it

VERIFIED = ("1.24.1",)  # great_expectations/expectations/expectation.py read at this version


def _lookup(self: Any, kwargs: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """`keys` from the configuration's kwargs, else the field's default."""
    return {key: kwargs.get(key, self._get_default_value(key)) for key in keys}


def _get_domain_kwargs(self: Any) -> dict[str, Any]:
    return _lookup(self, self.configuration.kwargs, self.domain_keys)


def _get_success_kwargs(self: Any) -> dict[str, Any]:
    kwargs = self.configuration.kwargs
    return {**_lookup(self, kwargs, self.success_keys), **_lookup(self, kwargs, self.domain_keys)}


def _success_kwarg(self: Any, kwargs: dict[str, Any], key: str, default: Any = None) -> Any:
    if key in kwargs:
        return kwargs[key]
    field = self.__fields__.get(key)
    if field is not None:
        return field.default if not field.required else default
    log.warning('_get_success_kwarg called with key "%s", but it is not a known field of %s',
                key, type(self).__name__)
    return default


def _get_success_kwarg(self: Any, key: str, default: Any = None) -> Any:
    return _success_kwarg(self, self.configuration.kwargs, key, default)


def _get_runtime_kwargs(self: Any, runtime_configuration: dict | None = None) -> dict:
    from great_expectations.expectations.expectation import parse_result_format

    runtime_configuration = runtime_configuration or {}
    success_kwargs = self._get_success_kwargs()
    if type(self)._get_success_kwarg is _get_success_kwarg:  # not overridden: look up once
        kwargs = self.configuration.kwargs
        one = lambda key: _success_kwarg(self, kwargs, key)  # noqa: E731
    else:
        one = self._get_success_kwarg
    runtime_kwargs = {key: runtime_configuration.get(key, one(key)) for key in self.runtime_keys}
    runtime_kwargs.update(success_kwargs)
    runtime_kwargs["result_format"] = parse_result_format(runtime_kwargs["result_format"])
    return runtime_kwargs


REPLACEMENTS = {"_get_domain_kwargs": _get_domain_kwargs,
                "_get_success_kwargs": _get_success_kwargs,
                "_get_success_kwarg": _get_success_kwarg,
                "_get_runtime_kwargs": _get_runtime_kwargs}
_ORIGINALS: dict[str, Any] = {}


def apply() -> bool:
    """Replace the lookups (idempotent); False, and GX left as it is, on an unverified version."""
    import great_expectations as gx
    from great_expectations.expectations.expectation import Expectation

    if gx.__version__ not in VERIFIED:
        return False
    for name, fn in REPLACEMENTS.items():
        _ORIGINALS.setdefault(name, Expectation.__dict__[name])
        setattr(Expectation, name, fn)
    return True


def originals() -> dict[str, Any]:
    """GX's own methods, as they were before `apply` (for the equivalence test)."""
    from great_expectations.expectations.expectation import Expectation

    return {name: _ORIGINALS.get(name, Expectation.__dict__[name]) for name in REPLACEMENTS}
