"""The catalog describes DSPy's modules truthfully and stays in step with what dspy ships."""

from __future__ import annotations

import inspect
import re

import dspy
import dspy.predict
import pytest

from dspex.errors import ConfigurationError
from dspex.modules import NOT_IN_CATALOG, REQUIRED, ModuleEntry, catalog, module_entry, module_names
from dspex.modules._options import matches, type_name

ENTRIES = sorted(catalog().values(), key=lambda e: e.name)


def _shipped_module_classes() -> set[str]:
    """Classes dspy 3.4 exports from dspy.predict (and Flex from dspy), minus the Tool type."""
    names = {n for n in dspy.predict.__all__ if inspect.isclass(getattr(dspy.predict, n))} - {"Tool"}
    return names | {"Flex"}


def test_catalog_covers_every_module_dspy_ships() -> None:
    in_catalog = {e.dspy_class.__name__ for e in ENTRIES if e.origin == "dspy"}
    assert in_catalog.isdisjoint(NOT_IN_CATALOG)
    assert in_catalog | set(NOT_IN_CATALOG) == _shipped_module_classes()


def test_dspex_patterns_are_dspy_modules_defined_by_dspex() -> None:
    patterns = {e.name for e in ENTRIES if e.origin == "dspex"}
    assert patterns == {"consensus", "self_correcting_cot", "tree_of_thoughts"}
    for name in patterns:
        cls = module_entry(name).dspy_class
        assert issubclass(cls, dspy.Module)
        assert cls.__module__.startswith("dspex.modules.patterns")


def test_names_are_sorted_snake_case_and_unique() -> None:
    names = module_names()
    assert list(names) == sorted(catalog())
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", n) for n in names)
    assert len({e.dspy_class for e in ENTRIES}) == len(ENTRIES)


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_entry_options_match_the_dspy_constructor(entry: ModuleEntry) -> None:
    params = inspect.signature(entry.dspy_class.__init__).parameters
    takes_config = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    assert entry.description
    assert ("signature" in params) is entry.takes_signature
    for option in entry.options:
        if option.kind == "arg":
            assert option.name in params, option.name
            dspy_default = params[option.name].default
            expected = REQUIRED if dspy_default is inspect.Parameter.empty else dspy_default
            assert option.default == expected, option.name
        elif option.kind == "interpreter":
            assert params["interpreter_factory"].default is dspy.PythonInterpreter
            assert option.default == "sandbox"
        elif option.kind in ("lm", "lm_dict"):
            assert takes_config, f"{entry.name} has LM options but DSPy takes no **config"
        elif option.kind in ("tools", "module"):
            assert option.name in params
        # Every default is a value of the option's own type, so the type is one matches() understands.
        if not option.required:
            assert matches(option.default, option.type), (option.name, type_name(option.type))


@pytest.mark.parametrize("entry", ENTRIES, ids=lambda e: e.name)
def test_flags_agree_with_options(entry: ModuleEntry) -> None:
    assert entry.executes_code is (entry.option("interpreter") is not None)
    assert entry.uses_tools is (entry.option("tools") is not None)
    assert entry.wraps_module is (entry.option("module") is not None)
    assert (entry.stability == "deprecated") is bool(entry.note and "Deprecated" in entry.note)


def test_unknown_module_name_suggests_the_close_one() -> None:
    with pytest.raises(ConfigurationError) as info:
        module_entry("chain_of_thougt")
    assert str(info.value) == (
        "unknown module 'chain_of_thougt'; did you mean 'chain_of_thought'? valid: "
        + ", ".join(module_names())
    )


def test_catalog_is_read_only() -> None:
    with pytest.raises(TypeError):
        catalog()["mine"] = ENTRIES[0]  # type: ignore[index]  # the point: the mapping is immutable


@pytest.mark.parametrize(
    ("module", "option", "expected"),
    [
        ("rlm", "interpreter", "'sandbox' | 'local'"),
        ("rlm", "sub_lm", "dspy.BaseLM | None"),
        ("react", "tools", "list[str | callable]"),
        ("best_of_n", "module", "str | Mapping[str, any value] | dspy.Module"),
    ],
)
def test_type_names_read_like_annotations(module: str, option: str, expected: str) -> None:
    found = module_entry(module).option(option)
    assert found is not None
    assert found.type_name == expected
