"""Task profiles: what kind of prompt a request is, how its answers are read, what checks them.

A profile (declared in config, ``tasks``) has a name, a rule that recognises its prompts, an
answer format (``tasks.answers``: how a final answer is extracted, keyed for voting and
graded), a verifier (an exact checker, the configured reward model, or none) and the
delimiter of one reasoning step (what step search extends by). A prompt is matched once per
request (``TaskProfiles.match``); the resulting ``Task`` travels with the problem to the
policy (priors and statistics are kept per profile) and to the strategies.

Built in: the bundled model's ``game24`` (exact checker) and ``arithmetic``, ``math`` for
GSM8K- and MATH-style questions, and ``open``, the fallback for prompts with no extractable
answer: voting and search cannot choose among candidates there, so they are not offered.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from backends.verifiers.base import Verifier
from tasks.answers import ANSWER_FORMATS, get_format
from tasks.bundled import parse_task
from tasks.checkers import EXACT_CHECKERS, exact_checker
from tasks.task import OPEN, Task

#: a profile's ``verifier``: none, the configured reward model, or an exact checker's name
VERIFIER_CHOICES: tuple[str, ...] = ("none", "reward_model", *EXACT_CHECKERS)

#: the model the bundled tasks' profiles are for (their answer format is its own)
BUNDLED_MODEL = "acr-bundled"

# Math questions: LaTeX, a bare expression ("What is 17+25?"), or a question about numbers
# ("How many ...", "What is the total ...").
_MATH_RULES = (
    r"\$[^$\n]{1,200}\$|\\\(|\\\[|\\(?:frac|dfrac|sqrt|binom|cdot|times|pi|sum|int|log|sin|cos)\b",
    r"^\s*(?:what\s+is|compute|calculate|evaluate)?\s*[-+*/^()\d\s.,x×÷]*\d\s*[-+*/^x×÷]"
    r"\s*[-+*/^()\d\s.,x×÷]*\d[-+*/^()\d\s.,x×÷]*\s*[?=]?\s*$",
    r"(?s)^(?=.*\d).*\b(?:how (?:many|much|long|far|old|fast|tall|often)|what(?:'s| is| are| was|"
    r" were| will| would)(?: the| their| her| his| its)? (?:total|sum|value|number|probability|"
    r"area|perimeter|difference|product|average|mean|cost|price|distance|length|speed|"
    r"percentage|percent|amount|remainder|ratio|result|maximum|minimum|smallest|largest|least|"
    r"greatest|fewest|most|combined|annual)|what percentage|what power|calculate|compute|"
    r"evaluate|simplify|solve|find the|determine)\b",
    r"\b(?:expand and simplify|solve for|how many ways|determine the number of|express your "
    r"answer|find all|compute the)\b",
    r"\b(?:what is|what's|compute|calculate|evaluate|how much is)\b[^\n]{0,40}?\d\s*[-+*/×÷^]\s*\d",
)


class MatchRule(BaseModel):
    """How a profile recognises its prompts: any of the rules that is set may match."""

    model_config = ConfigDict(extra="forbid")

    bundled: Literal["game24", "arithmetic"] | None = Field(
        default=None, description="The bundled model's own task parser."
    )
    regex: list[str] = Field(
        default_factory=list, description="Python regexes, searched case-insensitively."
    )
    keywords: list[str] = Field(default_factory=list, description="Case-insensitive substrings.")

    @field_validator("regex")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as exc:
                raise ValueError(f"invalid regex {p!r}: {exc}") from None
        return patterns

    def matcher(self) -> Callable[[str], bool]:
        """A predicate over prompt text (bounded work: the first 8,000 characters)."""
        regexes = [re.compile(p, re.IGNORECASE) for p in self.regex]
        words = [k.casefold() for k in self.keywords]
        bundled = self.bundled

        def matches(text: str) -> bool:
            head = text[:8000].strip()
            if bundled is not None and parse_task(head).kind == bundled:
                return True
            low = head.casefold()
            return any(w in low for w in words) or any(r.search(head) for r in regexes)

        return matches


class TaskProfileConfig(BaseModel):
    """One task profile as configured (``tasks.profiles``)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9_-]{1,40}$", description="Profile name (stats key).")
    match: MatchRule = Field(default_factory=MatchRule)
    answer: str = Field(
        default="none",
        description="Answer format: " + ", ".join(sorted(ANSWER_FORMATS)) + ".",
    )
    verifier: str = Field(
        default="none",
        description="'none', 'reward_model' (the configured one) or an exact checker "
        "(" + ", ".join(sorted(EXACT_CHECKERS)) + ").",
    )
    step_delimiter: str = Field(
        default="\n\n", min_length=1, max_length=8, description="What one search step ends with."
    )
    models: list[str] = Field(
        default_factory=list, description="Only for these backend models (empty: any)."
    )

    @field_validator("answer")
    @classmethod
    def _known_format(cls, name: str) -> str:
        get_format(name)  # raises with the valid names
        return name

    @field_validator("verifier")
    @classmethod
    def _known_verifier(cls, name: str) -> str:
        if name not in VERIFIER_CHOICES:
            raise ValueError(f"unknown verifier {name!r}; valid: {', '.join(VERIFIER_CHOICES)}")
        return name


def builtin_profiles() -> list[TaskProfileConfig]:
    """The built-in profiles, in match order (``open`` is the fallback, not listed)."""
    return [
        TaskProfileConfig(
            name="game24",
            match=MatchRule(bundled="game24"),
            answer="answer_line",
            verifier="game24",
            step_delimiter="\n",
        ),
        # The bundled model's arithmetic: its answers are on an ``Answer:`` line; other
        # models' arithmetic is ``math``.
        TaskProfileConfig(
            name="arithmetic",
            match=MatchRule(bundled="arithmetic"),
            answer="answer_line",
            step_delimiter="\n",
            models=[BUNDLED_MODEL],
        ),
        TaskProfileConfig(name="math", match=MatchRule(regex=list(_MATH_RULES)), answer="math"),
    ]


class TaskProfiles:
    """Matches prompts to the first profile whose rule accepts them, else ``open``.

    Only the profiles for the backend ``model`` take part; ``reward_model`` is the verifier
    of profiles that name it, and of ``open`` when given.
    """

    def __init__(
        self,
        profiles: list[TaskProfileConfig] | None = None,
        reward_model: Verifier | None = None,
        model: str = BUNDLED_MODEL,
    ) -> None:
        configs = builtin_profiles() if profiles is None else profiles
        configs = [c for c in configs if not c.models or model in c.models]
        self.configs = configs
        self._compiled = [(c, c.match.matcher(), self._task(c, reward_model)) for c in configs]
        self.fallback = Task(OPEN, reward_model)

    @staticmethod
    def _task(config: TaskProfileConfig, reward_model: Verifier | None) -> Task:
        verifier: Verifier | None = None
        if config.verifier == "reward_model":
            verifier = reward_model
        elif config.verifier != "none":
            verifier = exact_checker(config.verifier)
        return Task(config.name, verifier, get_format(config.answer), config.step_delimiter)

    def match(self, text: str) -> Task:
        """The task of ``text``; never raises (a matcher that fails does not match)."""
        for _, matches, task in self._compiled:
            try:
                if matches(text):
                    return task
            except Exception:  # noqa: BLE001 - a broken matcher must not fail a request
                continue
        return self.fallback

    def task_named(self, kind: str) -> Task:
        """The task of the profile called ``kind`` (``open`` for any other name): how a
        logged outcome's prompt was read when it was served."""
        for config, _, task in self._compiled:
            if config.name == kind:
                return task
        return self.fallback

    @property
    def kinds(self) -> list[str]:
        """Every profile name, ``open`` last."""
        return [c.name for c in self.configs] + [OPEN]
