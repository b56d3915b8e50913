"""The options of ``acr bench`` and ``acr calibrate``, declared as annotated types.

Each command takes more than fifteen options; declared here, one per name, the commands'
signatures in ``cli.py`` read as a list of options with their defaults. A parameter annotated
``option.BenchRows`` in ``cli.py`` is the ``--rows`` option of ``acr bench`` with this help
text. (typer reads the annotations when it builds the command, so these must be importable
at run time.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

# -- acr bench -------------------------------------------------------------------------------

BenchDataset = Annotated[str, typer.Option(help="game24 | arithmetic | jsonl")]
BenchData = Annotated[
    Path | None, typer.Option(help="game24.csv or a JSONL file of question/answer.")
]
BenchRows = Annotated[str, typer.Option(help="game24 rows, e.g. 900-999 or 0-99,900-999.")]
BenchPerCount = Annotated[int, typer.Option(help="arithmetic items per operand count.")]
BenchLimit = Annotated[int | None, typer.Option(help="Random subset of this many items.")]
BenchArms = Annotated[
    list[str] | None,
    typer.Option("--arm", help="strategy[:field=value,...]; repeatable. Default: a sweep."),
]
BenchModelDir = Annotated[Path | None, typer.Option(help="Checkpoint; default bundled.")]
BenchOutJson = Annotated[Path, typer.Option(help="Results JSON (PNG beside it).")]
BenchConcurrency = Annotated[int, typer.Option(help="Items in flight per row.")]
BenchTimeout = Annotated[
    float, typer.Option(help="Per-item deadline; strategies return their best so far.")
]
BenchDevice = Annotated[str, typer.Option(help="cpu | cuda | auto.")]
BenchThreads = Annotated[
    int, typer.Option(help="torch intra-op threads (1 is fastest on a shared CPU).")
]
BenchAuto = Annotated[bool, typer.Option(help="Add the router's auto row.")]
BenchOracle = Annotated[bool, typer.Option(help="Add the oracle row.")]
BenchPool = Annotated[
    Path | None,
    typer.Option(
        "--pool",
        help="A config with backends: adds the pool row (each item served by the pool).",
        exists=True,
    ),
]
BenchGroups = Annotated[bool, typer.Option(help="Also print accuracy per item group.")]

# -- acr calibrate ---------------------------------------------------------------------------

CalibrateData = Annotated[Path, typer.Option(help="JSONL file of questions and reference answers.")]
CalibrateProfile = Annotated[
    str | None, typer.Option(help="Task profile to calibrate (default: matched per prompt).")
]
CalibrateConfig = Annotated[
    Path | None, typer.Option("--config", "-c", help="The service's YAML config.", exists=True)
]
CalibrateOut = Annotated[Path, typer.Option(help="Output directory (resumes a run found there).")]
CalibrateQuestionField = Annotated[str, typer.Option(help="Field holding the question.")]
CalibrateAnswerField = Annotated[
    str, typer.Option(help="Field holding the reference answer ('' for none).")
]
CalibrateAnswerMarker = Annotated[
    str, typer.Option(help="The reference answer is what follows its last marker.")
]
CalibrateEvalPercent = Annotated[int, typer.Option(help="Share of questions held out (%).")]
CalibrateLimit = Annotated[int | None, typer.Option(help="Use the first N questions.")]
CalibrateArms = Annotated[
    list[str] | None,
    typer.Option(
        "--arm", help="strategy[:field=value,...]; repeatable. Default: the router's arms."
    ),
]
CalibrateConcurrency = Annotated[int, typer.Option(min=1, max=64, help="Items in flight.")]
CalibrateTimeout = Annotated[float, typer.Option(help="Deadline of one arm on one item.")]
CalibrateDevice = Annotated[str, typer.Option(help="Local checkpoint: cpu | cuda | auto.")]
CalibrateThreads = Annotated[int, typer.Option(help="Local checkpoint: torch threads.")]
CalibrateRestart = Annotated[bool, typer.Option(help="Discard the labels found in --out.")]
CalibrateBackend = Annotated[
    str | None,
    typer.Option(
        help="The pool backend to fit (by name); unset: every backend of a pool, each "
        "into --out/<name>."
    ),
]
CalibrateVersion = Annotated[
    str, typer.Option(help="The router model's version (part of its Redis keys).")
]
