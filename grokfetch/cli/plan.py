"""Human rendering of a ``--dry-run`` plan (:class:`grokfetch.plan.Plan`)."""

from __future__ import annotations

from typing import Any

from grokfetch.progress import human_duration
from grokfetch.units import human_bytes


def _size(n: int | None) -> str:
    return "–" if n is None else f"{human_bytes(n)} ({n:,} bytes)"


def _lines(plan: Any) -> list[str]:
    f = plan.figures
    if plan.command == "download":
        times = ", ".join(f"{human_duration(s)} at {human_bytes(int(r))}/s"
                          for r, s in f["seconds_at"].items())
        return [f"download {f['files']} files: {_size(f['download_bytes'])}",
                f"disk: {_size(f['disk_bytes'])}", f"time: {times}"]
    if plan.command == "convert":
        lines = [f"convert to {f['target']} ({f['details'].get('scheme', '')}): write "
                 f"{len(f['files'])} file(s), {_size(f['output_bytes'])}"]
        lines += [f"  {x['path']}  {human_bytes(x['bytes'])}" for x in f["files"][:8]]
        if len(f["files"]) > 8:
            lines.append(f"  … {len(f['files']) - 8} more")
        lines += [f"read: {_size(f['input_bytes'])}", f"disk: {_size(f['disk_bytes'])}",
                  f"peak RAM: about {human_bytes(f['peak_ram_bytes'], binary=True)} "
                  f"with -j {f['jobs']}"]
        if f["estimated_seconds"] is not None:
            lines.append(f"time: about {human_duration(f['estimated_seconds'])} with -j "
                         f"{f['jobs']}")
        return lines
    pd = f["per_device"]
    fits = {None: "not judged", True: "fits", False: "does NOT fit"}[f["fits"]]
    lines = [f"smoke {f['layers']} layers on {f['devices']} device(s), {f['dtype']}, "
             f"{f['prompt_tokens']} prompt tokens: load {_size(f['load_bytes'])}",
             f"per device: weights {_size(pd['weights'])}, KV cache {_size(pd['kv_cache'])}, "
             f"temporaries {_size(pd['temporaries'])}; total {_size(pd['total'])}",
             f"device memory: {_size(f['device_memory_bytes'])}: {fits}"]
    if f.get("fitting_layers"):
        lines.append(f"  --layers {f['fitting_layers']} fits")
    if f.get("devices_that_fit"):
        lines.append(f"  --gpus {f['devices_that_fit']} would hold {f['layers']} layers")
    return lines


def render_plan(plan: Any, console: Any) -> None:
    """Print ``plan``: its figures, then how they were got."""
    console.print(f"[bold]dry run[/bold] ({plan.model}): nothing was read or written")
    for line in _lines(plan):
        console.print(line, markup=False)
    for note in plan.notes:
        console.print(f"[dim]note: {note}[/dim]")
