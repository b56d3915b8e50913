"""Putting one ``RouterService`` together from config: the policy, the learner of its
outcomes, the task profiles. Used by the serving runtime and by the offline commands alike,
so that what they run is the service users get."""

from __future__ import annotations

from typing import Any

from backends.base import Backend
from backends.verifiers.base import Verifier
from policies.adaptive import AdaptivePolicy
from policies.learning import learner_for
from router.config import AppConfig
from router.core.service import RouterService
from router.live_config import revision
from router.metrics import Metrics
from router.outcomes.log import OutcomeLog
from router.quota.limiter import RateLimiter
from tasks.profiles import TaskProfiles


def make_profiles(config: AppConfig, reward_model: Verifier | None) -> TaskProfiles:
    """The task profiles of ``config`` (yours, then the built-in ones)."""
    return TaskProfiles(config.tasks.all_profiles(), reward_model, config.model.name)


def make_policy(
    config: AppConfig,
    backend: Backend,
    redis: Any = None,
    previous: AdaptivePolicy | None = None,
) -> AdaptivePolicy:
    """The adaptive policy for ``config``, sharing state through ``redis`` (a
    ``redis.asyncio.Redis``) when given; ``previous`` is the policy a live reload replaces
    (its load tracker, and its store while the version holds, carry over)."""
    return AdaptivePolicy.build(
        config.policy,
        config.strategies,
        backend,
        redis_client=redis,
        key_prefix=config.redis.key_prefix,
        reasoning=config.model.reasoning.think_open is not None,
        max_request_tokens=config.limits.max_request_tokens,
        revision=revision(config),
        previous=previous,
    )


def make_service(
    config: AppConfig,
    backend: Backend,
    *,
    redis: Any = None,
    outcomes: OutcomeLog | None = None,
    metrics: Metrics | None = None,
    limiter: RateLimiter | None = None,
    profiles: TaskProfiles | None = None,
    previous: RouterService | None = None,
) -> RouterService:
    """The service for ``config`` in front of ``backend``: its policy (state shared through
    ``redis`` when given) and that policy's learner, which the service's outcome records
    feed. ``previous`` is the service a live reload replaces: its policy's load tracker
    and store carry over, and a backend it started is not started again."""
    old = previous.policy if previous is not None else None
    policy = make_policy(config, backend, redis, old if isinstance(old, AdaptivePolicy) else None)
    service = RouterService(
        config,
        backend,
        policy,
        learner=learner_for(policy),
        outcomes=outcomes,
        metrics=metrics,
        limiter=limiter,
        profiles=profiles if profiles is not None else make_profiles(config, None),
    )
    if previous is not None and previous.backend is backend:
        service.started = previous.started
    return service
