"""The models the router serves, as configured: one model (``model``), or the backends of a
pool (``backends``, ``pool``), with their replicas' autoscaling and reasoning tags. Part of
the config tree of ``router.config``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from router.config_section import Section as _Section


class AutoscalingConfig(_Section):
    """Ray Serve autoscaling of a deployment."""

    min_replicas: NonNegativeInt = 1
    max_replicas: PositiveInt = 1
    target_ongoing_requests: float = Field(default=8.0, gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> AutoscalingConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(
                f"max_replicas ({self.max_replicas}) must be >= min_replicas ({self.min_replicas})"
            )
        return self


class ReasoningConfig(_Section):
    """A reasoning model that thinks between tags before it answers (DeepSeek-R1, Qwen3...).

    With ``think_open`` set, bounded reasoning is a real thinking budget: the model thinks up
    to the budget's tokens, the router closes the block with ``think_close`` and lets it
    answer in at most ``answer_max_tokens`` (budget forcing); thinking counts as reasoning
    tokens and may be returned as ``reasoning_content``.
    """

    think_open: str | None = Field(
        default=None, max_length=32, description="Tag that opens thinking, e.g. <think>."
    )
    think_close: str = Field(default="</think>", min_length=1, max_length=32)
    answer_max_tokens: PositiveInt = Field(default=512, le=32768)
    return_reasoning_content: bool = Field(
        default=True, description="Return the thinking as message.reasoning_content."
    )


class ModelConfig(_Section):
    """The model backend the router forwards to."""

    name: str = Field(default="acr-bundled", min_length=1, description="Model id in the API.")
    kind: Literal["transformers", "openai"] = Field(
        default="transformers",
        description="'transformers': a local causal LM run by Ray Serve replicas; "
        "'openai': an OpenAI-compatible server (vLLM, SGLang, TGI, llama.cpp).",
    )
    path: str | None = Field(
        default=None, description="Local checkpoint directory; empty uses the bundled model."
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="'auto' is bfloat16 on CUDA and float32 on CPU."
    )
    num_cpus: float = Field(default=1.0, ge=0)
    num_gpus: float = Field(default=0.0, ge=0, description="GPUs per replica (0 = CPU).")
    torch_threads: NonNegativeInt = Field(
        default=0,
        description="0 uses the replica's num_cpus (at least 1). Decoding runs in a worker "
        "thread, where a small model ran 2.5x slower on 2 OpenMP threads than on 1 (2-core "
        "CPU): scale CPU models out with replicas rather than threads.",
    )
    batching: Literal["continuous", "static"] = Field(
        default="continuous",
        description="'continuous': requests join and leave the running batch between decode "
        "steps; 'static': Ray Serve's @serve.batch collects requests and each batch decodes "
        "until its longest row ends (max_batch_size, batch_wait_timeout_ms).",
    )
    max_batch_size: PositiveInt = Field(
        default=8, le=256, description="Requests per batch (static batching)."
    )
    batch_wait_timeout_ms: float = Field(
        default=5.0, ge=0, le=1000, description="Wait to fill a batch (static batching)."
    )
    autoscaling: AutoscalingConfig = Field(default_factory=AutoscalingConfig)
    base_url: str | None = Field(default=None, description="For kind 'openai': server URL.")
    api_key_env: str | None = Field(
        default=None, description="For kind 'openai': env var holding the server's API key."
    )
    http_timeout_ms: PositiveInt = Field(default=60_000, le=600_000)
    served_name: str | None = Field(
        default=None, description="For kind 'openai': the model id sent upstream (else name)."
    )
    tokenizer_path: str | None = Field(
        default=None,
        description="For kind 'openai': the model's tokenizer (a local directory or its .gguf) "
        "for its real chat template and token counts; else the server's own template "
        "endpoint is used where it has one.",
    )
    capabilities: dict[str, bool | int] = Field(
        default_factory=dict,
        description="Capabilities to take as given instead of discovering them at startup: "
        "native_n, logprobs, completions, chat_template, exact_token_counts.",
    )
    max_concurrency: PositiveInt = Field(
        default=4, le=1024, description="For kind 'openai': calls in flight when n fans out."
    )
    extra_body: dict[str, Any] = Field(
        default_factory=dict,
        description="Fields added to every upstream request, e.g. {repeat_penalty: 1.0}.",
    )
    reasoning: ReasoningConfig = Field(default_factory=ReasoningConfig)
    price_per_1k_prompt_tokens: float = Field(
        default=0.0, ge=0, description="Price of 1,000 prompt tokens (the pool's unit)."
    )
    price_per_1k_completion_tokens: float | None = Field(
        default=None,
        ge=0,
        description="Price of 1,000 generated tokens (hidden ones included); unset: 1 unit, "
        "so that a pool without prices compares tokens.",
    )

    @model_validator(mode="after")
    def _openai_needs_url(self) -> ModelConfig:
        if self.kind == "openai" and not self.base_url:
            raise ValueError("model.kind 'openai' needs model.base_url (e.g. http://vllm:8000/v1)")
        return self

    def price(self, prompt_tokens: float, completion_tokens: float) -> float:
        """What a request of these tokens costs here, in the pool's price units."""
        per_1k = self.price_per_1k_completion_tokens
        generated = completion_tokens * (1.0 if per_1k is None else per_1k) / 1000
        return generated + prompt_tokens * self.price_per_1k_prompt_tokens / 1000


class BackendConfig(ModelConfig):
    """One backend of a pool: a model as ``model`` describes one (its prices included),
    with what the pool needs to choose it: the task profiles it may serve, its own router
    model."""

    profiles: list[str] = Field(
        default_factory=list, description="Task profiles it may serve (empty: all)."
    )
    router_model_path: str | None = Field(
        default=None,
        description="Its router model (acr calibrate --backend); unset: policy.classifier_path.",
    )


#: the fields a pool backend has beyond a model's
POOL_FIELDS = (
    "profiles",
    "router_model_path",
)


class PoolConfig(_Section):
    """Several backends behind one endpoint (``backends``): the id that names the pool."""

    id: str = Field(
        default="auto",
        min_length=1,
        max_length=256,
        description="The model id of the pool: a request naming it (or none) lets the router "
        "choose the model as well as the strategy.",
    )
