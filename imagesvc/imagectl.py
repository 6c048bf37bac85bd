"""imagectl: capture, list, rename, delete and recover your images, and follow their jobs.

The users' command, built on :mod:`imagesvc.client` (the operator's is ``imagesvc``).
Where to connect comes from a flag, else the environment (IMAGESVC_URL,
IMAGESVC_API_KEY, IMAGESVC_SECRET, IMAGESVC_ZONE), else the file ``imagectl login``
writes, else the defaults.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx
from rich import box
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table

from imagesvc.client import ApiError, Capture, Client, Image, Job, JobFailed, WaitTimeout
from imagesvc.help_format import say_defaults

DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_ZONE = "ac1"
ENVIRONMENT = {
    "url": "IMAGESVC_URL",
    "api_key": "IMAGESVC_API_KEY",
    "secret": "IMAGESVC_SECRET",
    "zone": "IMAGESVC_ZONE",
}
JOB_FAILED = 1
USAGE = 2

Command = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """The command cannot run as given (e.g. no credentials)."""


@dataclass(frozen=True)
class Connection:
    url: str
    api_key: str
    secret: str
    zone: str


def config_path() -> Path:
    """``$XDG_CONFIG_HOME/imagesvc/config.json``, or under ``~/.config``."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "imagesvc" / "config.json"


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command: Command = args.command
    try:
        return command(args)
    except UsageError as error:
        print(f"imagectl: {error}", file=sys.stderr)
        return USAGE
    except ApiError as error:
        print(f"imagectl: {error}", file=sys.stderr)
        return JOB_FAILED
    except httpx.HTTPError as error:
        print(f"imagectl: cannot reach {args.url or 'the API'}: {error}", file=sys.stderr)
        return JOB_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagectl", description=__doc__)
    groups = parser.add_subparsers(required=True, metavar="COMMAND")
    common = _common_options()
    _add_login(groups, common)
    _add_image_commands(groups, common)
    _add_job_commands(groups, common)
    return say_defaults(parser)


def _common_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    where = f"${{{ENVIRONMENT['url']}}}, else the login file, else {DEFAULT_URL}"
    common.add_argument("--url", help=f"the API's address (default: {where})")
    for name, what in (("api-key", "your API key"), ("secret", "your secret")):
        env = ENVIRONMENT[name.replace("-", "_")]
        common.add_argument(f"--{name}", help=f"{what} (default: ${{{env}}}, else the login file)")
    zone = f"${{{ENVIRONMENT['zone']}}}, else the login file, else {DEFAULT_ZONE}"
    common.add_argument("--zone", help=f"the zone (default: {zone})")
    common.add_argument("--json", action="store_true", help="print JSON, for scripts")
    return common


def _add_login(groups: Any, common: argparse.ArgumentParser) -> None:
    login = groups.add_parser(
        "login",
        parents=[common],
        help="check credentials and save them for later commands",
        description=f"Saves the URL, API key, secret and zone in {config_path()} (mode 0600).",
    )
    login.set_defaults(command=cmd_login)


def _add_image_commands(groups: Any, common: argparse.ArgumentParser) -> None:
    images = groups.add_parser("images", help="your images").add_subparsers(
        required=True, metavar="ACTION"
    )
    listing = images.add_parser("list", parents=[common], help="public images and your own")
    listing.add_argument("--image", action="append", default=[], help="only this id; repeatable")
    listing.add_argument(
        "--status", action="append", default=[], help="only this status; repeatable"
    )
    listing.add_argument("--processor-type", choices=["64bit", "32bit"], help="only this type")
    listing.add_argument("--os-family", help="only this OS family, e.g. ubuntu")
    listing.add_argument("--visibility", choices=["public", "private"], help="only these")
    listing.add_argument("--provider", choices=["system", "self"], help="self: yours only")
    listing.add_argument("--search", help="only ids or names containing this")
    listing.set_defaults(command=cmd_images_list)

    capture = images.add_parser("capture", parents=[common], help="image a stopped instance")
    capture.add_argument("--instance", required=True, help="the instance id (required)")
    capture.add_argument("--name", help="the new image's name")
    _add_wait_options(capture)
    capture.set_defaults(command=cmd_images_capture)

    modify = images.add_parser("modify", parents=[common], help="rename or describe an image")
    modify.add_argument("image", help="the image id")
    modify.add_argument("--name", help="the new name; unchanged if not given")
    modify.add_argument("--description", help="the new description; unchanged if not given")
    _add_wait_options(modify)
    modify.set_defaults(command=cmd_images_modify)

    for action, what in (("delete", "delete images"), ("recover", "bring deleted images back")):
        batch = images.add_parser(action, parents=[common], help=what)
        batch.add_argument("images", nargs="+", metavar="IMAGE", help="image ids")
        _add_wait_options(batch)
        batch.set_defaults(command=cmd_images_batch, action=action)


def _add_job_commands(groups: Any, common: argparse.ArgumentParser) -> None:
    jobs = groups.add_parser("jobs", help="your jobs").add_subparsers(
        required=True, metavar="ACTION"
    )
    listing = jobs.add_parser("list", parents=[common], help="your jobs, newest first")
    listing.add_argument("--job", action="append", default=[], help="only this id; repeatable")
    listing.add_argument(
        "--status", action="append", default=[], help="only this status; repeatable"
    )
    listing.add_argument(
        "--action", action="append", default=[], help="only this action; repeatable"
    )
    listing.set_defaults(command=cmd_jobs_list)
    show = jobs.add_parser("show", parents=[common], help="one job")
    show.add_argument("job", help="the job id")
    show.set_defaults(command=cmd_jobs_show)
    wait = jobs.add_parser("wait", parents=[common], help="wait for a job, showing its progress")
    wait.add_argument("job", help="the job id")
    wait.add_argument("--timeout", type=float, help="give up after this many seconds")
    wait.set_defaults(command=cmd_jobs_wait, wait=True)


def _add_wait_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--wait", action="store_true", help="wait for the job, showing its progress"
    )
    parser.add_argument("--timeout", type=float, help="with --wait: give up after N seconds")


# Connecting.


def connection(args: argparse.Namespace) -> Connection:
    """Each setting from its flag, else the environment, else the login file, else default."""
    saved = _read_config()
    defaults = {"url": DEFAULT_URL, "zone": DEFAULT_ZONE}
    values: dict[str, str] = {}
    for name, env in ENVIRONMENT.items():
        value = getattr(args, name, None) or os.environ.get(env) or saved.get(name)
        values[name] = value or defaults.get(name, "")
    if not values["api_key"] or not values["secret"]:
        raise UsageError(
            "no credentials: run 'imagectl login', or set IMAGESVC_API_KEY and IMAGESVC_SECRET"
        )
    return Connection(**values)


def client_for(args: argparse.Namespace) -> Client:
    where = connection(args)
    return Client(where.url, where.api_key, where.secret, where.zone)


def _read_config() -> dict[str, str]:
    path = config_path()
    try:
        saved = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise UsageError(f"cannot read {path}: {error}") from None
    return {key: str(value) for key, value in saved.items() if key in ENVIRONMENT}


def _write_config(where: Connection) -> Path:
    """Save the connection readable by its owner only (the secret is in it)."""
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(descriptor, 0o600)  # an older file may have been more open
    with os.fdopen(descriptor, "w") as file:
        json.dump(asdict(where), file, indent=2)
        file.write("\n")
    return path


# Commands.


def cmd_login(args: argparse.Namespace) -> int:
    if not (args.secret or os.environ.get(ENVIRONMENT["secret"])) and sys.stdin.isatty():
        args.secret = getpass.getpass("secret: ")
    where = connection(args)
    with Client(where.url, where.api_key, where.secret, where.zone) as client:
        next(iter(client.jobs()), None)  # the credentials and zone work
    path = _write_config(where)
    _emit(args, {"saved": str(path), "url": where.url, "zone": where.zone})
    return 0


def cmd_images_list(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        found = list(
            client.images(
                images=args.image or None,
                status=args.status or None,
                processor_type=args.processor_type,
                os_family=args.os_family,
                visibility=args.visibility,
                provider=args.provider,
                search_word=args.search,
            )
        )
    if args.json:
        _print_json([_plain(image) for image in found])
    else:
        _print_images(found)
    return 0


def cmd_images_capture(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        return _report_job(args, client, client.capture(args.instance, image_name=args.name))


def cmd_images_modify(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        job = client.modify(args.image, image_name=args.name, description=args.description)
        return _report_job(args, client, job)


def cmd_images_batch(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        start = client.delete if args.action == "delete" else client.recover
        return _report_job(args, client, start(*args.images))


def cmd_jobs_list(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        found = list(
            client.jobs(
                jobs=args.job or None, status=args.status or None, action=args.action or None
            )
        )
    if args.json:
        _print_json([_plain(job) for job in found])
    else:
        _print_jobs(found)
    return 0


def cmd_jobs_show(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        _print_job(args, client.job(args.job))
    return 0


def cmd_jobs_wait(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        return _report_job(args, client, client.job(args.job))


def _report_job(args: argparse.Namespace, client: Client, job: Job) -> int:
    """Print the job; with ``--wait``, follow it first and fail as it fails."""
    if getattr(args, "wait", False):
        try:
            done = _wait_with_progress(client, job, args.timeout)
        except (JobFailed, WaitTimeout) as ended:
            _print_job(args, _keep_image_id(ended.job, job))
            print(f"imagectl: {ended}", file=sys.stderr)
            return JOB_FAILED
        job = _keep_image_id(done, job)
    _print_job(args, job)
    return 0


def _keep_image_id(later: Job, started: Job) -> Job:
    """A polled capture job, with the ``image_id`` only the capture's reply carries."""
    if isinstance(started, Capture) and not isinstance(later, Capture):
        sent = later.model_dump(exclude_unset=True)
        return Capture.model_validate({**sent, "image_id": started.image_id})
    return later


def _wait_with_progress(client: Client, job: Job, timeout: float | None) -> Job:
    """Wait for ``job`` with a progress bar on stderr: its status, phase and percent."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        TextColumn("{task.fields[state]}"),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(job.job_id, total=100, state=_state(job))

        def show(current: Job) -> None:
            bar.update(task, completed=current.progress, state=_state(current))

        return client.wait(job, timeout=timeout, on_progress=show)


def _state(job: Job) -> str:
    return f"{job.status} ({job.phase})" if job.phase else job.status


# Output.


def _plain(result: Job | Image) -> dict[str, Any]:
    """The fields the server sent (and no others), as JSON values."""
    plain: dict[str, Any] = result.model_dump(mode="json", exclude_unset=True)
    return plain


def _print_json(data: object) -> None:
    print(json.dumps(data, indent=2))


def _emit(args: argparse.Namespace, data: dict[str, str]) -> None:
    if args.json:
        _print_json(data)
    else:
        for key, value in data.items():
            print(f"{key}: {value}")


def _print_job(args: argparse.Namespace, job: Job) -> None:
    if args.json:
        _print_json(_plain(job))
        return
    table = Table(show_header=False, box=None)
    for key, value in _plain(job).items():
        if key == "error" and value:
            value = f"{value['code']}: {value['message']}"
        elif isinstance(value, list):
            value = ", ".join(value)
        table.add_row(key, "" if value is None else str(value))
    _stdout().print(table)


def _stdout() -> Console:
    """The terminal's width on a terminal; in a pipe, whole lines, never cut ids."""
    console = Console()
    return console if console.is_terminal else Console(width=10_000)


def _table(*headers: str) -> Table:
    table = Table(box=box.SIMPLE_HEAD, header_style="bold")
    for index, header in enumerate(headers):
        # Ids are copied into the next command: never wrapped or cut.
        table.add_column(header, no_wrap=index == 0 or "ID" in header)
    return table


def _print_images(images: Iterable[Image]) -> None:
    table = _table(
        "IMAGE ID", "NAME", "STATUS", "SIZE (GB)", "OS", "PROVIDER", "VISIBILITY", "CREATED (UTC)"
    )
    for image in images:
        status = image.status + (f" ({image.transition_status})" if image.transition_status else "")
        table.add_row(
            image.image_id,
            image.image_name,
            status,
            str(image.size),
            image.os_family,
            image.provider,
            image.visibility,
            f"{image.create_time:%Y-%m-%d %H:%M:%S}",
        )
    _stdout().print(table)


def _print_jobs(jobs: Iterable[Job]) -> None:
    table = _table("JOB ID", "ACTION", "STATUS", "PROGRESS", "RESOURCES", "CREATED (UTC)", "ERROR")
    for job in jobs:
        error = f"{job.error.code}: {job.error.message}" if job.error else ""
        table.add_row(
            job.job_id,
            job.action,
            _state(job),
            f"{job.progress}%",
            ", ".join(job.resource_ids),
            f"{job.create_time:%Y-%m-%d %H:%M:%S}",
            error,
        )
    _stdout().print(table)


if __name__ == "__main__":
    sys.exit(main())
