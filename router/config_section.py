"""The base of every configuration section: unknown keys are errors, assignments are
validated."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A section of the config tree (``router.config.AppConfig``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
