from __future__ import annotations

import enum
import json
from collections.abc import Iterator, Mapping
from typing import Any

import dspy

from dspex.jsonable import dumps, to_jsonable


def test_predictions_and_examples_convert_to_their_fields_every_time() -> None:
    prediction = dspy.Prediction(answer="A", score=(1, 2.5), nested=dspy.Example(q="x").with_inputs("q"))
    expected = {"answer": "A", "score": [1, 2.5], "nested": {"q": "x"}}
    # The first conversion learns the class; later ones take the short way and must agree.
    for _ in range(3):
        assert to_jsonable(prediction) == expected
        assert to_jsonable(dspy.Example(answer="B")) == {"answer": "B"}


class _FieldsMapping(Mapping[str, Any]):
    """Outside DSPy: a Mapping that also has toDict (the Mapping conversion wins, every time)."""

    def __init__(self) -> None:
        self._data = {"mapped": 1}

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def toDict(self) -> dict[str, Any]:  # DSPy's spelling
        return {"to_dict": 1}


class _Fields:
    """Outside DSPy, not a Mapping: converted through toDict."""

    def __init__(self, value: int) -> None:
        self.value = value

    def toDict(self) -> dict[str, Any]:  # DSPy's spelling
        return {"value": self.value}


def test_other_classes_with_to_dict_keep_the_general_rules() -> None:
    for _ in range(2):
        assert to_jsonable(_FieldsMapping()) == {"mapped": 1}
        assert to_jsonable(_Fields(3)) == {"value": 3}


class _Colour(enum.Enum):
    RED = "red"


class _Key(str):
    """A str subclass as a dict key."""


def test_dumps_turns_keys_that_are_not_text_into_strings() -> None:
    # Encoded first without orjson's non-text keys option: these keys make it fall back to the option.
    value = {1: "int", 2.5: "float", None: "none", _Key("sub"): "str subclass", "nested": {3: [{4: None}]}}
    assert json.loads(dumps(value)) == {
        "1": "int",
        "2.5": "float",
        "null": "none",
        "sub": "str subclass",
        "nested": {"3": [{"4": None}]},
    }
    assert json.loads(dumps({_Colour.RED: 1})) == {"red": 1}
    assert dumps({"text": "keys", "n": [1, 2]}) == '{"text":"keys","n":[1,2]}'


def test_a_span_tree_holds_a_modules_prediction_as_its_fields() -> None:
    from dspex.telemetry.recorder import RunRecorder

    prediction = dspy.Prediction(answer="A")
    to_jsonable(prediction)  # as a run's end does before its trace is taken
    recorder = RunRecorder()
    opened = recorder.open("module", dspy.Predict("q -> answer"), {"q": "x"})
    recorder.close(opened, prediction, None)
    span = recorder.trace()["spans"][0]
    assert span["outputs"] == {"answer": "A"}
    assert json.loads(dumps(recorder.trace()))["spans"][0]["outputs"] == {"answer": "A"}
