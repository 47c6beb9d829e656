"""The space document: a variable space and its bindings as one JSON (or YAML) mapping.

::

    {"variables": {"v": 1, "variables": [...]},     # VariableSpace.describe()
     "bindings": {"version": 1, "bindings": [...]}}  # Bindings.to_json()

``dspex optimize --space FILE``, optimization jobs and the service's optimization endpoint all read
this form; errors are ``SpecError`` naming the failing path (``variables.variables[2]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dspex.errors import SpecError, UserError
from dspex.variables.binding import Bindings
from dspex.variables.core import Variable
from dspex.variables.space import VariableSpace

if TYPE_CHECKING:
    from dspex.modules.tools import ToolRegistry

__all__ = ["space_document", "space_from_document"]

_HELP = "a space is a mapping with 'variables' and 'bindings' (see dspex optimize --help)"


def space_from_document(
    data: Any, *, functions: ToolRegistry | None = None
) -> tuple[VariableSpace, Bindings]:
    """The space and bindings of a space document; ``SpecError`` with the failing path.

    ``functions`` resolves constraints and derived values named by a plain name (the operator's
    registry, ``App.tools``); ``module:function`` paths are imported. A document received over the API
    is checked first with ``App.spec_policy().check_space_document``, which refuses paths unread.
    """
    if not isinstance(data, Mapping) or not {"variables", "bindings"} <= set(data):
        raise SpecError(_HELP)
    extra = sorted(set(data) - {"variables", "bindings"})
    if extra:
        raise SpecError(f"unknown key(s) {extra}; a space has 'variables' and 'bindings'", path=str(extra[0]))
    variables = data["variables"]
    if not isinstance(variables, Mapping) or not isinstance(variables.get("variables"), list):
        raise SpecError(
            "'variables' is {v: 1, variables: [...]}, the JSON of VariableSpace.describe()", path="variables"
        )
    for i, entry in enumerate(variables["variables"]):
        try:
            Variable.from_json(entry)
        except UserError as exc:
            raise SpecError(str(exc), path=f"variables.variables[{i}]") from None
    try:
        space = VariableSpace.from_json(variables, functions=functions)
    except UserError as exc:
        raise SpecError(str(exc), path="variables") from None
    try:
        bindings = Bindings.from_json(data["bindings"])
    except SpecError as exc:
        raise SpecError(exc.message, path=f"bindings.{exc.path}" if exc.path else "bindings") from None
    except UserError as exc:
        raise SpecError(str(exc), path="bindings") from None
    return space, bindings


def space_document(space: VariableSpace, bindings: Bindings) -> dict[str, Any]:
    """The document :func:`space_from_document` reads back."""
    return {"variables": space.describe(), "bindings": bindings.to_json()}
