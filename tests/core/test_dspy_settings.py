from __future__ import annotations

import threading
from typing import Any

import dspy

from dspex._dspy_settings import setting


def test_setting_reads_what_dspy_settings_reads() -> None:
    names = ("lm", "adapter", "usage_tracker", "disable_history", "callbacks")
    for name in names:
        assert setting(name) is getattr(dspy.settings, name)
    lm = dspy.LM("openai/gpt-4o-mini")
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter(), dspex_custom=3):
        for name in (*names, "dspex_custom"):
            assert setting(name) is getattr(dspy.settings, name)
        with dspy.context(lm=None):
            assert setting("lm") is None
            assert setting("dspex_custom") == 3
        assert setting("lm") is lm
    assert setting("lm") is dspy.settings.lm


def test_setting_of_an_unknown_name_is_none() -> None:
    assert setting("no_such_dspy_setting") is None


def test_setting_follows_each_threads_context() -> None:
    seen: dict[str, Any] = {}
    lm = dspy.LM("openai/gpt-4o-mini")

    def other() -> None:
        seen["lm"] = setting("lm")

    with dspy.context(lm=lm):
        thread = threading.Thread(target=other)  # a plain thread does not inherit dspy.context
        thread.start()
        thread.join()
        assert setting("lm") is lm
    assert seen["lm"] is dspy.settings.lm
