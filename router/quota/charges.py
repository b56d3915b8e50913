"""What a request holds against its key's token limit, and what it is charged when it ends.

A request is charged what it generated plus the prompt it had read (the tokens ``usage``
reports). Before it runs it holds the most that can be: at admission the prompt and the
probe the policy may run; once decided, ``request_token_ceiling`` (``n`` runs of the
strategy at their caps, plus the probe) and the prompt. How each ending is charged:

- an answer (also a stream read to its end): its ``usage``;
- a backend error, or a stream that fails or the client leaves: the probe's tokens and the
  pieces already streamed, with the prompt they read (a closed stream stops the backend);
- a deadline with no answer, or a client gone from a request that was not streaming:
  everything it held, since a call cut off reports no count and the model may finish
  generating anyway;
- a replica that dies first: nothing; the hold expires with its window.
"""

from __future__ import annotations

from backends.base import Backend
from policies.base import Problem
from policies.bounds import request_token_ceiling
from policies.decision import Decision

#: tokens a chat template may add per message (role markers) ...
TEMPLATE_TOKENS_PER_MESSAGE = 8
#: ... and once (a default system prompt, a generation prompt)
TEMPLATE_TOKENS = 64


def prompt_allowance(problem: Problem) -> int:
    """Tokens held for ``problem``'s prompt before a backend has counted it: its UTF-8 bytes
    (byte-level and character tokenizers make at most one token per byte) plus what a chat
    template adds. An upper bound, held only until the probe or the answer counts it."""
    if problem.messages:
        texts = [m.text for m in problem.messages]
    else:
        texts = [problem.prompt if problem.prompt is not None else problem.text]
    size = sum(len(t.encode("utf-8", "replace")) for t in texts)
    return size + TEMPLATE_TOKENS_PER_MESSAGE * len(texts) + TEMPLATE_TOKENS


def admission_tokens(problem: Problem, probe_tokens: int) -> int:
    """What a request holds from admission to its decision: the prompt and the probe
    (``probe_tokens``, the policy's probe length) the decision may run."""
    return prompt_allowance(problem) + max(0, probe_tokens)


def prompt_tokens(problem: Problem, decision: Decision) -> int:
    """The prompt's tokens: the probe's count when one ran, else ``prompt_allowance``."""
    if decision.probe is not None and decision.probe.prompt_tokens > 0:
        return decision.probe.prompt_tokens
    return prompt_allowance(problem)


def decided_tokens(problem: Problem, decision: Decision, n: int) -> int:
    """What a decided request holds while it runs: the most ``n`` runs of ``decision`` may
    generate (the probe included) and its prompt."""
    ceiling = request_token_ceiling(
        decision.strategy, decision.budget, n, problem.think, decision.probe_tokens
    )
    return ceiling + prompt_tokens(problem, decision)


def spent_without_answer(
    problem: Problem, decision: Decision | None, streamed_tokens: int = 0
) -> int:
    """What a request that ended without an answer generated and read: its probe and the
    ``streamed_tokens`` already sent, and the prompt when the model produced any of them."""
    probe = decision.probe_tokens if decision is not None else 0
    generated = probe + max(0, streamed_tokens)
    if generated == 0 or decision is None:
        return generated
    return generated + prompt_tokens(problem, decision)


def streamed_tokens(backend: Backend, pieces: list[str], prefix: str = "") -> int:
    """Tokens of the text ``pieces`` sent to a client, less a ``prefix`` that was the probe's
    (by the backend's tokenizer, else one per piece)."""
    text = "".join(pieces)
    if prefix and text.startswith(prefix):
        text = text[len(prefix) :]
    if not text:
        return 0
    counted = backend.count_tokens(text)
    return counted if counted is not None else max(1, len(pieces) - (1 if prefix else 0))
