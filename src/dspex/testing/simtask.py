"""A simulated task with known gold answers, and model profiles whose quality is known exactly.

The simulated OpenAI-compatible server (:mod:`dspex.testing.server`) answers the task's questions
correctly with a probability that depends on the model, the temperature, whether the program asks
for reasoning (a ``reasoning`` output field, as ``dspy.ChainOfThought`` adds) and how many few-shot
demos the prompt carries. Because that probability is a formula, an optimizer's result can be checked
against the true optimum::

    task = load_task(size=200)
    expected_accuracy("sim-large", temperature=0.7, reasoning=True, demos=4)   # 0.98
    best = optimum()                    # the best (model, temperature, reasoning, demos) on a grid
    cost_usd("sim-small", input_tokens=1_000, output_tokens=100)

Whether one answer is right is deterministic: a hash of (seed, model, question, temperature to one
decimal, reasoning, demos) mapped to [0, 1) is compared with the probability of being right. Wrong
answers are plausible (a nearby number, another capital). Pure Python; DSPy is only imported by
:meth:`SimTask.examples`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from dspex.errors import ConfigurationError, did_you_mean
from dspex.testing._prompt import Field, Prompt, default_value, literal_options, render_answer

__all__ = [
    "DEFAULT_PROFILES",
    "DEFAULT_TEMPERATURE",
    "MAX_TASK_SIZE",
    "ModelProfile",
    "Setting",
    "SimAnswer",
    "SimExample",
    "SimTask",
    "TaskKind",
    "answer_prompt",
    "answer_question",
    "cost_usd",
    "expected_accuracy",
    "get_profile",
    "load_task",
    "optimum",
    "unit_hash",
    "wrong_answer",
]

TaskKind = Literal["arithmetic", "capital"]

# (country, capital): well-known pairs, so wrong answers (another capital) look plausible.
_CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Canada", "Ottawa"), ("Australia", "Canberra"), ("Brazil", "Brasilia"), ("Argentina", "Buenos Aires"),
    ("Egypt", "Cairo"), ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("Mexico", "Mexico City"),
    ("Peru", "Lima"), ("Chile", "Santiago"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Poland", "Warsaw"), ("Austria", "Vienna"),
    ("Greece", "Athens"), ("Turkey", "Ankara"), ("Russia", "Moscow"), ("Ukraine", "Kyiv"),
    ("Ireland", "Dublin"), ("Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Hungary", "Budapest"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Philippines", "Manila"),
    ("South Korea", "Seoul"), ("Morocco", "Rabat"), ("Colombia", "Bogota"), ("New Zealand", "Wellington"),
)  # fmt: skip

_NAMES = ("Ada", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kemi", "Luis")
_ITEMS = ("apples", "books", "marbles", "stamps", "coins", "shells", "cards", "pencils")
MAX_TASK_SIZE = 5000  # far below the distinct questions the generators can produce


@dataclass(frozen=True, slots=True)
class SimExample:
    """One question of the simulated task with its gold answer and a short gold rationale."""

    question: str
    answer: str
    kind: TaskKind
    rationale: str

    def to_dict(self) -> dict[str, str]:
        return {"question": self.question, "answer": self.answer}


def unit_hash(*parts: object) -> float:
    """A deterministic number in [0, 1) from the parts (stable across processes, unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _arithmetic(rng: random.Random) -> SimExample:
    name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
    a, b = rng.randint(5, 60), rng.randint(2, 40)
    op = rng.choice(("gets", "gives away", "doubles"))
    if op == "gets":
        q = f"{name} has {a} {item} and gets {b} more. How many {item} does {name} have now?"
        return SimExample(q, str(a + b), "arithmetic", f"{a} + {b} = {a + b}.")
    if op == "gives away":
        a = a + b  # never negative
        q = f"{name} has {a} {item} and gives away {b}. How many {item} are left?"
        return SimExample(q, str(a - b), "arithmetic", f"{a} - {b} = {a - b}.")
    q = f"{name} has {a} {item} and then doubles the collection. How many {item} does {name} have?"
    return SimExample(q, str(2 * a), "arithmetic", f"2 * {a} = {2 * a}.")


def _capital(rng: random.Random) -> SimExample:
    country, city = rng.choice(_CAPITALS)
    phrasing = rng.choice(("What is the capital of {c}?", "Which city is the capital of {c}?"))
    q = phrasing.format(c=country)
    return SimExample(q, city, "capital", f"The capital of {country} is {city}.")


@dataclass(frozen=True, slots=True)
class SimTask:
    """A deterministic question set: arithmetic word problems and capital cities, from a seed.

    >>> task = SimTask.generate(size=100, seed=0)
    >>> task.lookup(task.items[0].question) == task.items[0]
    True
    """

    items: tuple[SimExample, ...]
    seed: int = 0
    _index: dict[str, SimExample] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {ex.question: ex for ex in self.items})

    @classmethod
    def generate(cls, size: int = 300, seed: int = 0) -> SimTask:
        """``size`` distinct questions, about 60% arithmetic and 40% capitals."""
        if not 1 <= size <= MAX_TASK_SIZE:
            raise ConfigurationError(f"task size must be between 1 and {MAX_TASK_SIZE}, got {size}")
        rng = random.Random(f"dspex-simtask-{seed}")
        seen: dict[str, SimExample] = {}
        # Questions repeat by chance; skip duplicates so each question has one gold answer.
        while len(seen) < size:
            ex = _arithmetic(rng) if rng.random() < 0.6 or len(seen) >= size - 1 else _capital(rng)
            seen.setdefault(ex.question, ex)
        return cls(tuple(seen.values()), seed)

    def __len__(self) -> int:
        return len(self.items)

    def lookup(self, question: str) -> SimExample | None:
        """The task item with this question (surrounding whitespace ignored), if any."""
        return self._index.get(question.strip())

    def dicts(self) -> list[dict[str, str]]:
        """The items as ``{"question", "answer"}`` dicts."""
        return [ex.to_dict() for ex in self.items]

    def examples(self) -> list[Any]:
        """The items as ``dspy.Example`` objects with ``question`` as the input."""
        import dspy

        return [dspy.Example(**ex.to_dict()).with_inputs("question") for ex in self.items]


def wrong_answer(ex: SimExample, *salt: object) -> str:
    """A plausible wrong answer to ``ex``: a nearby number or another capital."""
    u = unit_hash("wrong", ex.question, *salt)
    if ex.kind == "arithmetic":
        offset = 1 + int(u * 9)
        value = int(ex.answer)
        return str(value + offset if u < 0.5 or value - offset < 0 else value - offset)
    others = [city for _, city in _CAPITALS if city != ex.answer]
    return others[int(u * len(others))]


def load_task(size: int = 300, seed: int = 0) -> SimTask:
    """The bundled task: ``size`` questions generated from ``seed``.

    >>> trainset = load_task(200).examples()          # dspy.Example(question=..., answer=...)
    """
    return SimTask.generate(size, seed)


# -- model profiles ------------------------------------------------------------------------------

DEFAULT_TEMPERATURE = 1.0  # what OpenAI-compatible servers assume when a request sends none
_MIN_P, _MAX_P = 0.02, 0.98


def _round_temperature(temperature: float | None) -> float:
    return round(DEFAULT_TEMPERATURE if temperature is None else float(temperature), 1)


@dataclass(frozen=True, slots=True)
class ModelProfile:
    """How a simulated model behaves: quality, latency and price.

    The probability of a right answer is ``base_accuracy``, plus ``reasoning_bonus`` when the program
    asks for reasoning, plus ``demo_bonus`` per few-shot demo (up to ``max_demos``), minus
    ``temperature_penalty`` per unit of distance from ``best_temperature``; clipped to [0.02, 0.98].

    >>> ModelProfile("tiny", base_accuracy=0.5).accuracy(temperature=1.0, reasoning=True, demos=2)
    0.5
    """

    name: str
    base_accuracy: float
    reasoning_bonus: float = 0.0
    demo_bonus: float = 0.0
    max_demos: int = 0
    best_temperature: float = DEFAULT_TEMPERATURE
    temperature_penalty: float = 0.0
    latency: float = 0.0
    input_price: float = 0.0  # USD per 1M input tokens
    output_price: float = 0.0  # USD per 1M output tokens

    def __post_init__(self) -> None:
        if not 0.0 <= self.base_accuracy <= 1.0:
            raise ConfigurationError(f"base_accuracy of {self.name!r} must be in [0, 1]")
        for name in ("latency", "input_price", "output_price", "max_demos", "temperature_penalty"):
            if getattr(self, name) < 0:
                raise ConfigurationError(f"{name} of {self.name!r} must be >= 0")

    def accuracy(self, temperature: float | None, reasoning: bool, demos: int) -> float:
        """Probability of a right answer under these settings (temperature rounded to 0.1)."""
        t = _round_temperature(temperature)
        p = self.base_accuracy
        p += self.reasoning_bonus if reasoning else 0.0
        p += self.demo_bonus * min(max(demos, 0), self.max_demos)
        p -= self.temperature_penalty * abs(t - self.best_temperature)
        return round(min(_MAX_P, max(_MIN_P, p)), 6)

    def cost_usd(self, input_tokens: int, output_tokens: int) -> float:
        """Price of one call in USD."""
        return (input_tokens * self.input_price + output_tokens * self.output_price) / 1_000_000


DEFAULT_PROFILES: Mapping[str, ModelProfile] = MappingProxyType(
    {
        p.name: p
        for p in (
            ModelProfile(
                "sim-small",
                0.40,
                reasoning_bonus=0.10,
                demo_bonus=0.03,
                max_demos=4,
                best_temperature=0.3,
                temperature_penalty=0.20,
                latency=0.01,
                input_price=0.10,
                output_price=0.40,
            ),
            ModelProfile(
                "sim-medium",
                0.60,
                reasoning_bonus=0.12,
                demo_bonus=0.025,
                max_demos=6,
                best_temperature=0.5,
                temperature_penalty=0.15,
                latency=0.02,
                input_price=0.50,
                output_price=2.00,
            ),
            ModelProfile(
                "sim-large",
                0.78,
                reasoning_bonus=0.08,
                demo_bonus=0.015,
                max_demos=8,
                best_temperature=0.7,
                temperature_penalty=0.10,
                latency=0.04,
                input_price=3.00,
                output_price=12.00,
            ),
        )
    }
)


def get_profile(model: str, profiles: Mapping[str, ModelProfile] = DEFAULT_PROFILES) -> ModelProfile:
    """The profile named ``model`` (a ``provider/`` prefix is ignored); unknown names raise."""
    name = model.rsplit("/", 1)[-1]
    try:
        return profiles[name]
    except KeyError:
        raise ConfigurationError(did_you_mean(name, profiles, what="simulated model")) from None


def expected_accuracy(
    model: str,
    temperature: float | None = None,
    reasoning: bool = False,
    demos: int = 0,
    *,
    profiles: Mapping[str, ModelProfile] = DEFAULT_PROFILES,
) -> float:
    """The probability that ``model`` answers a task question right under these settings.

    >>> expected_accuracy("sim-small", temperature=0.3)
    0.4
    """
    return get_profile(model, profiles).accuracy(temperature, reasoning, demos)


def cost_usd(
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    profiles: Mapping[str, ModelProfile] = DEFAULT_PROFILES,
) -> float:
    """Price in USD of a call to ``model`` with these token counts.

    >>> cost_usd("sim-large", 1_000_000, 0)
    3.0
    """
    return get_profile(model, profiles).cost_usd(input_tokens, output_tokens)


def answer_question(
    task: SimTask,
    question: str,
    profile: ModelProfile,
    *,
    temperature: float | None,
    reasoning: bool,
    demos: int,
    seed: int = 0,
    choice: int = 0,
) -> tuple[SimExample, str, bool] | None:
    """How ``profile`` answers a task question: (item, answer, correct); None if not a task question.

    Deterministic in (seed, model, question, temperature to 0.1, reasoning, demos, choice).
    """
    ex = task.lookup(question)
    if ex is None:
        return None
    t = _round_temperature(temperature)
    draw = unit_hash(seed, profile.name, ex.question, t, reasoning, demos, choice)
    if draw < profile.accuracy(t, reasoning, demos):
        return ex, ex.answer, True
    return ex, wrong_answer(ex, seed, profile.name, t, reasoning, demos, choice), False


# -- the known optimum ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Setting:
    """One point of the search space and its exact expected accuracy."""

    model: str
    temperature: float
    reasoning: bool
    demos: int
    accuracy: float


DEFAULT_TEMPERATURES: tuple[float, ...] = tuple(round(0.1 * k, 1) for k in range(0, 16))


def optimum(
    *,
    models: Iterable[str] | None = None,
    temperatures: Sequence[float] = DEFAULT_TEMPERATURES,
    reasoning: Sequence[bool] = (False, True),
    demos: Iterable[int] = range(0, 9),
    key: Callable[[Setting], float] | None = None,
    profiles: Mapping[str, ModelProfile] = DEFAULT_PROFILES,
) -> Setting:
    """The best setting on the grid by ``key`` (default: expected accuracy).

    Ties go to the cheaper model, then fewer demos, then no reasoning, then the lower temperature, so
    the answer is unique. A cost-aware objective is a ``key``::

        best = optimum(key=lambda s: s.accuracy - 0.1 * get_profile(s.model).output_price)
    """
    names = list(profiles) if models is None else list(models)
    demo_counts = list(demos)
    if not names or not temperatures or not reasoning or not demo_counts:
        raise ConfigurationError(
            "optimum needs at least one model, temperature, reasoning flag and demo count"
        )
    score = key or (lambda s: s.accuracy)
    best: tuple[tuple[float, ...], Setting] | None = None
    for name in names:
        profile = get_profile(name, profiles)
        price = profile.input_price + profile.output_price
        for t in temperatures:
            for r in reasoning:
                for d in demo_counts:
                    s = Setting(profile.name, _round_temperature(t), r, d, profile.accuracy(t, r, d))
                    rank = (score(s), -price, -d, -float(r), -s.temperature)
                    if best is None or rank > best[0]:
                        best = (rank, s)
    assert best is not None  # the grid is non-empty
    return best[1]


# -- answering a DSPy prompt ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SimAnswer:
    """The text a simulated model replies with; ``question``/``correct`` are set for task questions."""

    text: str
    question: str | None = None
    correct: bool | None = None


def _typed(answer: str, f: Field) -> Any:
    if f.type.startswith("Literal["):  # a classification: the answer when it is one of the labels
        return answer if answer in literal_options(f) else default_value(f)
    if f.type in ("int", "float"):
        try:
            return int(answer) if f.type == "int" else float(answer)
        except ValueError:
            return default_value(f)
    return answer if f.type == "str" else default_value(f)


def _generic(prompt: Prompt, f: Field) -> Any:
    if f.type != "str":
        return default_value(f)
    subject = " ".join(prompt.text.split())[:60]
    return f"Simulated answer about: {subject}" if subject else "Simulated answer."


_REASONING_FIELDS = ("reasoning", "rationale")


def answer_prompt(
    task: SimTask,
    prompt: Prompt,
    turns: Sequence[tuple[str, str]],
    profile: ModelProfile,
    *,
    temperature: float | None,
    seed: int = 0,
    choice: int = 0,
) -> SimAnswer:
    """How ``profile`` replies to a DSPy-formatted prompt, in the prompt's adapter format.

    The first output field that is not a reasoning field (``reasoning``, or ``rationale`` as
    MultiChainComparison names it) gets the task's answer (right or wrong per the profile) when an input
    value is a task question, else a deterministic answer derived from the inputs; reasoning fields get
    a short rationale; other fields get a plausible value of their type. A prompt without DSPy fields is
    answered as plain text.
    """
    reasoning = any(name in _REASONING_FIELDS for name in prompt.output_names)
    candidates = [v for v in prompt.inputs.values() if isinstance(v, str)]
    if not prompt.output_fields:  # not DSPy-formatted: the question is the last user turn
        candidates = [next((text for role, text in reversed(turns) if role == "user"), "")]
    hit = None
    for text in candidates:
        hit = answer_question(task, text, profile, temperature=temperature, reasoning=reasoning,
                              demos=prompt.demos, seed=seed, choice=choice)  # fmt: skip
        if hit is not None:
            break
    question, correct = (hit[0].question, hit[2]) if hit else (None, None)
    if not prompt.output_fields:
        return SimAnswer(
            hit[1] if hit else f"This is a simulated reply from {profile.name}.", question, correct
        )
    main = next((f for f in prompt.output_fields if f.name not in _REASONING_FIELDS), None)
    values: dict[str, Any] = {}
    for f in prompt.output_fields:
        if f.name in _REASONING_FIELDS and hit is not None:
            values[f.name] = hit[0].rationale if hit[2] else f"Working it out, I get {hit[1]}."
        elif f is main:
            values[f.name] = _typed(hit[1], f) if hit else _generic(prompt, f)
        else:
            values[f.name] = default_value(f)
    return SimAnswer(render_answer(prompt, values), question, correct)
