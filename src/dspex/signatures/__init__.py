"""Signature strings: parse, validate against, and write back DSPy signatures.

``signature("question, k: int -> answer")`` returns a genuine ``dspy.Signature`` subclass with the
same fields, order, annotations, instructions, prefixes and descriptions that
``dspy.Signature("question, k: int -> answer")`` gives. Nothing in the string is evaluated or
imported: type expressions are parsed with :mod:`ast` and resolved against an allow-list.

Grammar
-------
::

    spec   := fields? "->" fields?          (exactly one "->" outside quotes)
    fields := field ("," field)* ","?
    field  := NAME (":" TYPE)? DESCRIPTION?
    TYPE   := a Python type expression over allowed names (below)
    DESCRIPTION := a Python string literal: "..." or '...' (prefixes r/u allowed)

Allowed names in a type: ``str int float bool bytes complex list dict tuple set frozenset NoneType``;
from typing ``Any Annotated Dict FrozenSet List Literal Mapping Optional Sequence Set Text Tuple
Union`` (also as ``typing.X``); DSPy types ``dspy.Image dspy.Audio dspy.File dspy.History dspy.Tool
dspy.ToolCalls dspy.ToolCallResults dspy.Code dspy.Reasoning`` (also bare: ``Image``...);
``datetime.date/datetime/time/timedelta``, ``decimal.Decimal``, ``uuid.UUID``; and every key of
``custom_types`` (a key may be dotted: ``{"models.Person": Person}``). Types combine with
``X[...]``, ``X | Y``, ``Literal[...]`` of literals, and ``Annotated[T, Field(ge=0, ...)]`` with
literal keyword values.

Descriptions (dspex only)
-------------------------
A string literal after a field sets its DSPy description (``desc``)::

    question: str "the user question", docs: list[str] "retrieved passages" -> answer "one sentence"

:func:`to_spec` writes a signature back in this form, and ``signature(to_spec(sig),
sig.instructions)`` rebuilds an equal signature. A description may contain ``->`` and commas.

Deliberate differences from ``dspy.Signature`` (DSPy accepts, dspex raises ``SignatureError``)
----------------------------------------------------------------------------------------------
DSPy pastes the inputs and outputs into ``def f(...): pass`` and resolves names through everything in
``typing`` plus ``importlib.import_module``. dspex is stricter where that leads to surprises:

- ``default``: ``x: int = 3`` (DSPy drops the default silently).
- ``star``: ``*args``, ``**kw``, bare ``*`` and ``/`` (DSPy silently drops those fields, every
  field after a bare ``*``, and every field before a ``/``).
- ``duplicate``: ``a, a -> b`` (DSPy keeps one ``a``).
- ``none_type``: ``x: None`` (DSPy turns it into ``str``; write ``Optional[...]`` or ``NoneType``).
- ``unknown_name`` / ``attribute``: names outside the allow-list, such as ``ClassVar``, ``Final``,
  ``Self``, ``Type[int]``, ``collections.OrderedDict`` or ``os.path`` (DSPy imports any module named
  in the string, which runs its code). Pass such types in ``custom_types``.
- ``forward_ref``: quoted type names, ``list['int']`` (pydantic would evaluate the string).
- ``call`` / ``field_keyword``: only ``Field(...)`` inside ``Annotated[...]``, with literal values for
  documentation and constraint keywords (DSPy also evaluates ``Field(default_factory=list)``...).
- ``reserved``: field names that shadow ``dspy.Signature`` attributes (``instructions``, ``fields``,
  ``schema``, ``json``, ``model_dump_x``...; DSPy only lets pydantic warn) and the inputs ``lm``,
  ``demos``, ``config`` that ``dspy.Predict`` takes as its own keywords.
- ``nfkc``: identifiers Python would rewrite (``ﬁ`` becomes ``fi`` in DSPy).
- ``comment`` / ``backslash`` / ``unbalanced``: ``#`` comments, line continuations and unbalanced
  brackets outside quotes (with DSPy, ``"a): pass\\ndef g(b -> c"`` is a valid signature).
- ``nesting``: brackets or type operators nested deeper than 64 levels.

Extensions (dspex accepts, DSPy raises): descriptions, bare DSPy type names (``x: Image``, which
DSPy only finds when the caller imported ``Image``), and ``->`` inside quotes (``Literal['->']``;
DSPy counts every ``->`` in the string). ``dspy.Code['python']`` builds a new class on every parse in
both, so such annotations compare by base class and language, not identity.

Validation
----------
:func:`validate_inputs` / :func:`validate_outputs` check a mapping of values against a signature's
fields with pydantic and raise :class:`dspex.errors.ValidationError` naming every bad field.

Caching
-------
:func:`signature` caches compiled classes per ``(spec, instructions, custom types)`` (names and
identities), so a repeated call costs a fraction of a microsecond (see
``benchmarks/signatures.py``). The classes are shared: never
mutate one; ``with_instructions``, ``append`` and friends return new classes.
"""

from dspex.signatures._build import signature
from dspex.signatures._spec import to_spec
from dspex.signatures._validate import validate_inputs, validate_outputs

__all__ = ["signature", "to_spec", "validate_inputs", "validate_outputs"]
