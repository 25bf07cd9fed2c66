"""Host programs the policy's `[[exec.programs]]` grants (world `driver` only), run without a
shell; anything the policy does not grant raises `DriverError` before the program starts."""

from __future__ import annotations

from typing import Iterable, Mapping, Tuple

from componentize_py_types import Err
from wit_world.imports import exec as _host
from wit_world.imports.exec import Output

from . import DriverError

__all__ = ["Output", "run"]


def run(program: str, args: Iterable[str] = (),
        env: Mapping[str, str] | Iterable[Tuple[str, str]] = ()) -> Output:
    pairs = list(env.items()) if isinstance(env, Mapping) else list(env)
    try:
        return _host.run(program, [str(a) for a in args], [(str(k), str(v)) for k, v in pairs])
    except Err as error:
        raise DriverError(str(error.value)) from None
