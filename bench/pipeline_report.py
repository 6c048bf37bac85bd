"""What the pipeline benchmark writes: a plot and its section of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bench.scale_report import machine, write_section

if TYPE_CHECKING:
    from bench.pipeline import Results

START, END = "<!-- bench:pipeline:start -->", "<!-- bench:pipeline:end -->"
PLOT = "pipeline-throughput.png"


def write(results: Results, docs: Path) -> None:
    """The plot, and this benchmark's section of benchmarks.md (added, or replaced)."""
    (docs / "img").mkdir(parents=True, exist_ok=True)
    _plot(results, docs / "img" / PLOT)
    write_section(docs / "benchmarks.md", START, END, _section(results))


def _section(results: Results) -> str:
    from bench.pipeline import CONCURRENCY, TARGET

    lines = [
        "## Job pipeline (issue 9)",
        "",
        f"Measured {results.started} on {machine()}, load average at the start "
        f"{results.load}, by `python -m bench pipeline`: "
        f"{results.jobs:,} jobs per run, {results.rounds} run(s) of each side per concurrency, "
        "alternating, medians. imagesvc: delete jobs (no disk work, one image each, committed "
        "as the API commits them) from the first `JobQueue.send` to the last job `successful` "
        "in PostgreSQL and the last message acknowledged (a message's statement also settles "
        "up to 16 other pending jobs: a group commit), polled every 10 ms, run by "
        "`imagesvc worker` (`bench/pipeline_worker.py`: its unacknowledged messages under keys "
        "named after its queue, as the bare worker's). Bare: a no-op Celery task "
        "(`bench/bare_celery.py`) with the same configuration and worker command line (prefork, "
        "`acks_late`, `reject_on_worker_lost`, prefetch 1, JSON, results ignored, same "
        "concurrency, same Redis), from the first send to the last message acknowledged. "
        "CPU per job: the worker's processes (main and pool), for imagesvc also the "
        "PostgreSQL backends of its database (the bench's polling included), from "
        "`/proc/<pid>/stat`: unlike the rates, it hardly depends on the rest of the "
        "machine's load. What a job costs the database, and the profile: "
        "[pipeline-profile.md](pipeline-profile.md).",
        "",
        f"| worker concurrency | imagesvc delete jobs/s | bare Celery no-op tasks/s | ratio "
        f"(target ≥ {TARGET} at {CONCURRENCY}) | CPU ms per job: imagesvc | bare |",
        "|---|---|---|---|---|---|",
    ]
    for concurrency in sorted(results.levels):
        lines.append(
            f"| {concurrency} | {results.median(concurrency, 'imagesvc'):.0f} | "
            f"{results.median(concurrency, 'bare'):.0f} | {results.ratio(concurrency):.2f} | "
            f"{results.cpu_ms(concurrency, 'imagesvc'):.2f} | "
            f"{results.cpu_ms(concurrency, 'bare'):.2f} |"
        )
    lines += ["", f"![jobs per second against worker concurrency](img/{PLOT})"]
    return "\n".join(lines)


def _plot(results: Results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 5))
    levels = sorted(results.levels)
    for side, style in (("imagesvc", "-o"), ("bare", "--x")):
        rates = [results.median(concurrency, side) for concurrency in levels]
        label = "imagesvc delete jobs" if side == "imagesvc" else "bare Celery no-op tasks"
        (line,) = axes.plot(levels, rates, style, label=label)
        for concurrency in levels:
            runs = results.levels[concurrency].rates[side]
            axes.scatter([concurrency] * len(runs), runs, s=8, alpha=0.4, color=line.get_color())
    axes.set(
        xticks=levels,
        xlabel="worker concurrency (prefork processes)",
        ylabel="finished per second (medians; dots: each run)",
        title=f"Job pipeline against bare Celery ({results.started})",
    )
    axes.set_ylim(bottom=0)
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
