"""Grading a response with its task profile: what ``acr bench`` and ``acr calibrate`` count
as correct.

An exact checker (Game of 24) judges the response itself; otherwise the profile's answer
format extracts the response's final answer and compares it with the reference answer
(numbers by value, LaTeX by mathematical equivalence, choice letters, exact text).
"""

from __future__ import annotations

from tasks.task import Task

#: what separates a worked reference solution from its final answer (GSM8K's ``#### 72``)
DEFAULT_ANSWER_MARKER = "####"


def reference_answer(raw: object, marker: str | None = DEFAULT_ANSWER_MARKER) -> str | None:
    """The final answer of a dataset's reference field: the text after its last ``marker``
    when it has one, else the whole field stripped; None when the field is empty."""
    if raw is None:
        return None
    text = str(raw)
    if marker and marker in text:
        text = text.rsplit(marker, 1)[1]
    text = text.strip()
    return text or None


def gradable(task: Task, reference: str | None) -> bool:
    """Whether responses to this item can be graded: an exact checker, or a reference
    answer and a format that extracts answers."""
    return task.exact or (reference is not None and task.answers.name != "none")


def is_correct(task: Task, question: str, response: str, reference: str | None) -> bool:
    """True when ``response`` answers ``question`` correctly by ``task``'s rules: its exact
    checker's verdict, else its final answer equivalent to ``reference``."""
    if task.exact and task.verifier is not None:
        return task.verifier.score(question, response, reference) >= 1.0
    if reference is None:
        return False
    answer = task.answer_of(response)
    return answer is not None and task.answers.equivalent(answer, reference)
