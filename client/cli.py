"""``genmedia run MODEL --prompt ...``: one generation from the command line, for callers.

The caller's side of a request's way, on a terminal: the arguments become a queue submit
(``Client.submit``; ``--image`` / ``--mask`` are uploaded first), a progress bar follows the
job's SSE stream (queue position, then denoising steps), the outputs are saved and their paths
printed on stdout, one a line. HTTP errors print their type, message, fields and limits, never a
traceback. ``deployments/cli/main.py`` registers the command.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from genmedia.client._base import DEFAULT_URL
from genmedia.client.errors import GenmediaError
from genmedia.client.sync import Client
from genmedia.client.types import Result, Status, StreamEvent

console = Console(stderr=True, soft_wrap=True)
make_client = Client  # tests swap in a client on a mock transport


def parse_params(pairs: list[str]) -> dict[str, Any]:
    """``k=v`` pairs; a value that parses as JSON (7, 0.5, true, null, [..]) is taken as such,
    anything else as a string."""
    out: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.strip():
            raise typer.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--param")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        out[name.strip()] = value
    return out


def print_error(err: GenmediaError) -> None:
    status = "" if err.status is None else f"{err.status} "
    console.print(
        f"[bold red]error:[/] {status}[bold]{escape(err.type)}[/]: {escape(err.message)}",
        highlight=False,
    )
    for f in err.fields:
        limit = "" if f.limit is None else f" (limit: {escape(str(f.limit))})"
        console.print(f"  {escape(f.field)}: {escape(f.message)}{limit}", highlight=False)
    if err.request_id:
        console.print(f"  request: {escape(err.request_id)}", highlight=False)


def describe(status: Status) -> str:
    if status.status == "IN_QUEUE":
        parts = ["queued"]
        if status.queue_position is not None:
            parts.append(f"position {status.queue_position}")
        if status.eta_s is not None:
            parts.append(f"starts in ~{status.eta_s:.1f}s")
        return ", ".join(parts)
    if status.status == "IN_PROGRESS":
        return "generating"
    return status.status.lower()


def _follow(client: Client, request_id: str, timeout: float | None) -> Result:
    """Wait for the job with a progress bar of its steps (on stderr)."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} steps"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("submitted", total=None)

        def on_update(event: StreamEvent) -> None:
            status = event.status
            step = status.progress
            if step is not None:
                progress.update(task, total=step.total, completed=step.step)
            elif status.status == "COMPLETED" and progress.tasks[0].total:
                progress.update(task, completed=progress.tasks[0].total)
            progress.update(task, description=describe(status))

        return client.wait(request_id, on_update=on_update, timeout=timeout)


def run(
    model: Annotated[str, typer.Argument(help="Catalog id of the model (GET /v1/models).")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="What to generate.")],
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-P",
            help="A request field NAME=VALUE (repeatable), e.g. seed=7, width=64, "
            "num_inference_steps=4; JSON values are parsed.",
        ),
    ] = None,
    image: Annotated[
        Path | None,
        typer.Option(help="Input image (PNG, JPEG, WebP): image-to-image.", exists=True),
    ] = None,
    mask: Annotated[
        Path | None, typer.Option(help="Inpainting mask, same size as --image.", exists=True)
    ] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the outputs.")] = Path("."),
    priority: Annotated[
        str | None, typer.Option(help="interactive or batch (default: the tenant's class).")
    ] = None,
    url: Annotated[
        str, typer.Option(envvar="GENMEDIA_URL", help="The gateway's URL.")
    ] = DEFAULT_URL,
    key: Annotated[
        str | None,
        typer.Option(envvar="GENMEDIA_API_KEY", show_default=False, help="API key."),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option(help="Give up waiting after this many seconds.")
    ] = None,
) -> None:
    """Generate through the queue API with a progress bar; save the outputs, print their paths."""
    if not key:
        console.print("[bold red]error:[/] no API key: pass --key or set GENMEDIA_API_KEY")
        raise typer.Exit(2)
    if mask is not None and image is None:
        raise typer.BadParameter("--mask needs --image", param_hint="--mask")
    arguments = {"prompt": prompt, **parse_params(param or [])}
    request_id: str | None = None
    with make_client(url, key) as client:
        try:
            if image is not None:
                arguments["image"] = client.upload(image).id
            if mask is not None:
                arguments["mask_image"] = client.upload(mask).id
            handle = client.submit(model, arguments, priority=priority)
            request_id = handle.request_id
            console.print(f"request {request_id}", highlight=False)
            result = _follow(client, request_id, timeout)
            paths = client.save_all(result, out)
        except GenmediaError as e:
            print_error(e)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            if request_id is not None:
                try:
                    client.cancel(request_id)
                    console.print(f"cancelled {request_id}", highlight=False)
                except GenmediaError as e:
                    print_error(e)
            raise typer.Exit(130) from None
    timings = result.timings
    total = f" in {timings.total_s:.2f}s" if timings and timings.total_s is not None else ""
    console.print(f"[green]✓[/] {len(paths)} output(s), seed {result.seed}{total}")
    for path in paths:
        sys.stdout.write(f"{path}\n")
