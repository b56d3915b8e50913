"""What the router costs beside its server called directly, measured on both at once.

One run sends the same requests to an OpenAI-compatible server (``--direct``) and to a
router in front of it (``--router``, e.g. ``acr serve`` on Ray Serve) with the official
``openai`` client, one request at a time, alternating which goes first per item:

- ``open``: each open prompt (``docs/data/open_prompts.jsonl``) at temperature 0 with
  ``--max-tokens``: the router on its default path (``auto``); wall time and completion
  tokens, summed over the prompts;
- ``stream``: the same prompts streamed: time to the first content byte;
- ``responses`` (``--responses``): the same prompts through the router's Responses API and
  its chat completions: the decision, the tokens and the time to the first text delta of
  each, streamed;
- ``search``: ``best_of_n`` and ``self_consistency`` with ``--samples`` samples of at most
  ``--sample-tokens`` tokens on GSM8K questions through the router, against the same number
  of samples drawn directly as concurrent requests (a server with parallel slots decodes
  them side by side; one without serialises them, as it does for the router).

    python -m lab.overhead --direct http://127.0.0.1:18210/v1 --router http://127.0.0.1:8000/v1 \\
        --gsm8k ../shared/data/gsm8k_test.jsonl --out runs/overhead-llama-server.json
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from pathlib import Path
from typing import Annotated, Any

import openai
import typer

app = typer.Typer(add_completion=False)

OPEN_PROMPTS = Path(__file__).resolve().parents[1] / "docs" / "data" / "open_prompts.jsonl"


def _client(url: str, timeout_s: float) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=url, api_key="unused", max_retries=0, timeout=timeout_s)


async def _chat(client: openai.AsyncOpenAI, model: str, **kw: Any) -> dict[str, Any]:
    """One non-streamed answer: wall seconds, completion tokens, text, router object."""
    t0 = time.perf_counter()
    r = await client.chat.completions.create(model=model, **kw)
    wall = time.perf_counter() - t0
    return {
        "wall_s": wall,
        "tokens": r.usage.completion_tokens if r.usage else 0,
        "text": r.choices[0].message.content,
        "router": (r.model_extra or {}).get("router"),
    }


async def _first_byte(client: openai.AsyncOpenAI, model: str, **kw: Any) -> float:
    """Seconds until the first chunk with content arrives."""
    t0 = time.perf_counter()
    stream = await client.chat.completions.create(model=model, stream=True, **kw)
    first = None
    async for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
    return first if first is not None else time.perf_counter() - t0


async def open_prompts(
    direct: openai.AsyncOpenAI,
    routed: openai.AsyncOpenAI,
    model: str,
    max_tokens: int,
    n: int,
    router_model: str | None = None,
) -> dict[str, Any]:
    """Open prompts through both, alternating order; sums, ratios and identical answers.
    ``router_model`` is the name asked of the router (default ``model``; a pool's id)."""
    names = {"direct": model, "router": router_model or model}
    prompts = [json.loads(line)["question"] for line in OPEN_PROMPTS.read_text().splitlines()]
    rows = []
    for i, q in enumerate(prompts[:n]):
        kw = {
            "messages": [{"role": "user", "content": q}],
            "temperature": 0,
            "max_tokens": max_tokens,
        }
        pair = [("direct", direct), ("router", routed)]
        got: dict[str, Any] = {}
        for name, client in pair if i % 2 == 0 else pair[::-1]:
            got[name] = await _chat(client, names[name], **kw)
        ttfb: dict[str, float] = {}
        for name, client in pair if i % 2 else pair[::-1]:
            ttfb[name] = await _first_byte(client, names[name], **kw)
        rows.append({"prompt": q, **got, "first_byte_s": ttfb})
    d_wall = sum(r["direct"]["wall_s"] for r in rows)
    r_wall = sum(r["router"]["wall_s"] for r in rows)
    d_tok = sum(r["direct"]["tokens"] for r in rows)
    r_tok = sum(r["router"]["tokens"] for r in rows)
    extra_ms = [1000 * (r["first_byte_s"]["router"] - r["first_byte_s"]["direct"]) for r in rows]
    probes = [(r["router"]["router"] or {}).get("probe_tokens", 0) for r in rows]
    return {
        "prompts": len(rows),
        "wall_ratio": r_wall / d_wall,
        "tokens_ratio": r_tok / d_tok if d_tok else None,
        "direct_wall_s": d_wall,
        "router_wall_s": r_wall,
        "direct_tokens": d_tok,
        "router_tokens": r_tok,
        "identical_answers": sum(r["direct"]["text"] == r["router"]["text"] for r in rows),
        "first_byte_extra_ms_p50": statistics.median(extra_ms),
        "first_byte_extra_ms_p90": sorted(extra_ms)[int(0.9 * (len(extra_ms) - 1))],
        "direct_first_byte_ms_p50": 1000
        * statistics.median(r["first_byte_s"]["direct"] for r in rows),
        "probe_tokens_max": max(probes),
        "strategies": sorted({(r["router"]["router"] or {}).get("arm", "?") for r in rows}),
        "rows": rows,
    }


async def _first_text_delta(client: openai.AsyncOpenAI, model: str, text: str) -> float:
    """Seconds until the Responses stream's first text delta."""
    t0 = time.perf_counter()
    first = None
    async with client.responses.stream(model=model, input=text, temperature=0) as stream:
        async for event in stream:
            if first is None and event.type == "response.output_text.delta":
                first = time.perf_counter() - t0
    return first if first is not None else time.perf_counter() - t0


async def responses_vs_chat(
    routed: openai.AsyncOpenAI, model: str, max_tokens: int, n: int
) -> dict[str, Any]:
    """Each open prompt through the router's Responses API and its chat completions."""
    prompts = [json.loads(line)["question"] for line in OPEN_PROMPTS.read_text().splitlines()]
    rows = []
    for q in prompts[:n]:
        chat = await _chat(
            routed,
            model,
            messages=[{"role": "user", "content": q}],
            temperature=0,
            max_tokens=max_tokens,
        )
        resp = await routed.responses.create(
            model=model, input=q, temperature=0, max_output_tokens=max_tokens, store=False
        )
        router = (resp.model_extra or {}).get("router") or {}
        chat_first = await _first_byte(
            routed, model, messages=[{"role": "user", "content": q}], temperature=0
        )
        resp_first = await _first_text_delta(routed, model, q)
        rows.append(
            {
                "same_arm": router.get("arm") == (chat["router"] or {}).get("arm"),
                "same_text": resp.output_text == chat["text"],
                "chat_tokens": chat["tokens"],
                "responses_tokens": resp.usage.output_tokens if resp.usage else 0,
                "first_delta_extra_ms": 1000 * (resp_first - chat_first),
            }
        )
    extra = [r["first_delta_extra_ms"] for r in rows]
    return {
        "prompts": len(rows),
        "same_decision": sum(r["same_arm"] for r in rows),
        "same_text": sum(r["same_text"] for r in rows),
        "chat_tokens": sum(r["chat_tokens"] for r in rows),
        "responses_tokens": sum(r["responses_tokens"] for r in rows),
        "first_delta_extra_ms_p50": statistics.median(extra),
        "first_delta_extra_ms_p90": sorted(extra)[int(0.9 * (len(extra) - 1))],
        "rows": rows,
    }


async def search(
    direct: openai.AsyncOpenAI,
    routed: openai.AsyncOpenAI,
    model: str,
    questions: list[str],
    samples: int,
    sample_tokens: int,
) -> dict[str, Any]:
    """best_of_n and self_consistency through the router against ``samples`` concurrent
    direct samples of the same size, per question."""
    out: dict[str, Any] = {}
    for strategy in ("best_of_n", "self_consistency"):
        rows = []
        for i, q in enumerate(questions):
            messages: Any = [{"role": "user", "content": q}]
            budget = {"samples": samples, "batch_size": samples, "max_tokens": sample_tokens}
            t0 = time.perf_counter()
            status = 200
            try:
                r = await routed.chat.completions.create(
                    model=model,
                    messages=messages,
                    extra_body={"acr": {"strategy": strategy, "budget": budget}},
                )
                drawn = (r.model_extra or {}).get("router", {}).get("samples")
            except openai.APIStatusError as err:
                status, drawn = err.status_code, 0
            routed_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            await asyncio.gather(
                *(
                    direct.chat.completions.create(
                        model=model,
                        messages=messages,
                        temperature=0.8,
                        max_tokens=sample_tokens,
                        seed=1000 * i + k,
                    )
                    for k in range(samples)
                )
            )
            direct_s = time.perf_counter() - t0
            rows.append(
                {"status": status, "router_s": routed_s, "direct_s": direct_s, "samples": drawn}
            )
        answered = [r for r in rows if r["status"] == 200]
        out[strategy] = {
            "questions": len(rows),
            "answered": len(answered),
            "time_ratio": sum(r["router_s"] for r in rows) / sum(r["direct_s"] for r in rows),
            "router_s_mean": statistics.mean(r["router_s"] for r in rows),
            "direct_s_mean": statistics.mean(r["direct_s"] for r in rows),
            "rows": rows,
        }
    return out


@app.command()
def main(
    direct: Annotated[str, typer.Option(help="The server's /v1 base URL.")],
    router: Annotated[str, typer.Option(help="The router's /v1 base URL (in front of it).")],
    model: Annotated[str, typer.Option(help="The model name both answer to.")] = "smollm2",
    router_model: Annotated[
        str | None, typer.Option(help="The name asked of the router instead (a pool's id).")
    ] = None,
    gsm8k: Annotated[Path | None, typer.Option(help="GSM8K test JSONL (search rows).")] = None,
    questions: Annotated[int, typer.Option(help="GSM8K questions for the search rows.")] = 10,
    prompts: Annotated[int, typer.Option(help="Open prompts (at most 42).")] = 42,
    max_tokens: Annotated[int, typer.Option(help="Tokens per open-prompt answer.")] = 64,
    samples: Annotated[int, typer.Option(help="Samples of the search rows.")] = 4,
    sample_tokens: Annotated[int, typer.Option(help="Tokens per search sample.")] = 128,
    responses: Annotated[bool, typer.Option(help="Also compare Responses with chat.")] = False,
    out: Annotated[Path, typer.Option(help="Results JSON.")] = Path("runs/overhead.json"),
) -> None:
    """Measure the router beside its server; print the summary, write every row."""

    async def run() -> dict[str, Any]:
        d, r = _client(direct, 300), _client(router, 300)
        # Warm both (the router discovers the server at its first request).
        await _chat(
            r, router_model or model, messages=[{"role": "user", "content": "Hi"}], max_tokens=4
        )
        result: dict[str, Any] = {
            "open": await open_prompts(d, r, model, max_tokens, prompts, router_model)
        }
        if responses:
            result["responses"] = await responses_vs_chat(r, model, max_tokens, prompts)
        if gsm8k is not None:
            qs = [json.loads(x)["question"] for x in gsm8k.read_text().splitlines()[:questions]]
            result["search"] = await search(d, r, model, qs, samples, sample_tokens)
        return result

    result = asyncio.run(run())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    summary = {k: v for k, v in result["open"].items() if k != "rows"}
    typer.echo(json.dumps(summary, indent=1))
    if "responses" in result:
        shown = {k: v for k, v in result["responses"].items() if k != "rows"}
        typer.echo("responses vs chat: " + json.dumps(shown))
    for name, row in result.get("search", {}).items():
        typer.echo(f"{name}: " + json.dumps({k: v for k, v in row.items() if k != "rows"}))


if __name__ == "__main__":
    app()
