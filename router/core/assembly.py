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
from router.metrics import Metrics
from router.outcomes.log import OutcomeLog
from router.quota.limiter import RateLimiter
from tasks.profiles import TaskProfiles


def make_profiles(config: AppConfig, reward_model: Verifier | None) -> TaskProfiles:
    """The task profiles of ``config`` (yours, then the built-in ones)."""
    return TaskProfiles(config.tasks.all_profiles(), reward_model, config.model.name)


def make_policy(config: AppConfig, backend: Backend, redis: Any = None) -> AdaptivePolicy:
    """The adaptive policy for ``config``, sharing state through ``redis`` (a
    ``redis.asyncio.Redis``) when given."""
    return AdaptivePolicy.build(
        config.policy,
        config.strategies,
        backend,
        redis_client=redis,
        key_prefix=config.redis.key_prefix,
        reasoning=config.model.reasoning.think_open is not None,
        max_request_tokens=config.limits.max_request_tokens,
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
) -> RouterService:
    """The service for ``config`` in front of ``backend``: its policy (state shared through
    ``redis`` when given) and that policy's learner, which the service's outcome records
    feed."""
    policy = make_policy(config, backend, redis)
    return RouterService(
        config,
        backend,
        policy,
        learner=learner_for(policy),
        outcomes=outcomes,
        metrics=metrics,
        limiter=limiter,
        profiles=profiles if profiles is not None else make_profiles(config, None),
    )
