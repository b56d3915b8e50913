"""Configurations of the real service for tests that send it many requests: small strategy
budgets (every strategy finishes in milliseconds on the bundled model) and, where asked,
small request limits (so that schema-valid requests are cheap and fit the model's context).
"""

from __future__ import annotations

from policies.budget import Budget
from router.config import AppConfig, load_config
from router.serving.embedded_redis import free_port

#: the bundled model's context is 192 tokens of one character each: a prompt of at most this
#: many characters leaves room for the chat template and the answer
BUNDLED_PROMPT_CHARS = 150


def cheap_budgets(config: AppConfig, max_tokens: int = 16) -> None:
    """Every strategy's default budget cut to ``max_tokens`` per sample and a few samples."""
    budgets = {
        "single_pass": Budget(max_tokens=max_tokens, temperature=0.0),
        "bounded_reasoning": Budget(max_tokens=max_tokens, temperature=0.0),
        "best_of_n": Budget(max_tokens=max_tokens, samples=4, batch_size=4),
        "self_consistency": Budget(max_tokens=max_tokens, samples=4, batch_size=2),
        "beam_search": Budget(max_tokens=max_tokens, beam_width=2, expansions=2, max_steps=2),
    }
    config.strategies.budgets = budgets
    config.policy.probe_tokens = 8


def service_config(redis_url: str, stream: str, *, small_limits: bool = False) -> AppConfig:
    """The bundled model's service on a free port, outcomes in ``stream`` of ``redis_url``,
    with cheap budgets; ``small_limits`` also bounds requests to what the model can take."""
    cfg = load_config(env={})
    cfg.server.port = free_port()
    cfg.redis.url = redis_url
    cfg.redis.outcomes_stream = stream
    cheap_budgets(cfg)
    if small_limits:
        lim = cfg.limits
        lim.max_n = 3
        lim.max_tokens = 16
        # Two messages of half the prompt each: any request within the per-field bounds is
        # within the total too, so schema-valid requests fit the model's context.
        lim.max_messages = 2
        lim.max_message_chars = BUNDLED_PROMPT_CHARS // 2
        lim.max_prompt_chars = BUNDLED_PROMPT_CHARS
        lim.max_stop = 2
        lim.max_stop_chars = 8
        lim.max_samples = 4
        lim.max_search_width = 4
        lim.max_request_tokens = 2048
        cfg.server.request_timeout_ms = 20_000
        cfg.server.max_request_timeout_ms = 30_000
    return cfg
