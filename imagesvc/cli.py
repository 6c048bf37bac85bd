"""The ``imagesvc`` command: run the service, and the operator's tools."""

from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imagesvc.help_format import say_defaults
from imagesvc.logs import configure_logging
from imagesvc.settings import Settings

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from models.accounts import Credentials

Command = Callable[[argparse.Namespace, Settings], int]

log = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    settings = Settings()
    configure_logging(settings)
    command: Command = args.command
    try:
        return command(args, settings)
    except KeyboardInterrupt:
        return 130  # Ctrl-C: the shell's status for it, and no traceback
    except Exception as exc:
        from models.errors import ServiceError

        if isinstance(exc, ServiceError):
            print(f"imagesvc: {exc.message}", file=sys.stderr)
            return 2
        raise


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagesvc", description=__doc__)
    sub = parser.add_subparsers(required=True, metavar="COMMAND")
    _add_service_commands(sub)
    _add_db_commands(sub)
    _add_account_commands(sub)
    _add_instance_commands(sub)
    _add_image_commands(sub)
    _add_job_commands(sub)
    return say_defaults(parser)


def _add_service_commands(sub: Any) -> None:
    up = sub.add_parser("up", help="API, worker and scheduler together")
    _add_listen_args(up)
    up.set_defaults(command=cmd_up)
    api = sub.add_parser("api", help="the HTTP API alone")
    _add_listen_args(api)
    api.set_defaults(command=cmd_api)
    worker = sub.add_parser("worker", help="a Celery worker")
    worker.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="disk copies at once (default: IMAGESVC_WORKER_CONCURRENCY, itself 2 by default)",
    )
    worker.add_argument("--pool", default="prefork", choices=["prefork", "threads", "solo"])
    worker.add_argument(
        "--host",
        type=_host_name,
        default=None,
        help="the compute host this worker serves (default: IMAGESVC_COMPUTE_HOST or local)",
    )
    worker.set_defaults(command=cmd_worker)
    scheduler = sub.add_parser(
        "scheduler", help="the periodic sweeps (Celery beat; run as many as you like)"
    )
    scheduler.set_defaults(command=cmd_scheduler)


def _host_name(value: str) -> str:
    """argparse type of a compute host's name."""
    from models.errors import InvalidParameter
    from models.instances import require_host_name

    try:
        return require_host_name(value)
    except InvalidParameter as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def _add_host_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    from models.tables import LOCAL_HOST

    parser.add_argument("--host", type=_host_name, default=LOCAL_HOST, help=help_text)


def _add_listen_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)


def _add_db_commands(sub: Any) -> None:
    db = sub.add_parser("db", help="database schema").add_subparsers(required=True)
    db.add_parser("upgrade", help="apply Alembic migrations").set_defaults(command=cmd_db_upgrade)


def _add_account_commands(sub: Any) -> None:
    account = sub.add_parser("account", help="accounts").add_subparsers(required=True)
    create = account.add_parser("create", help="create an account and its API key")
    create.add_argument("name")
    create.add_argument("--json", action="store_true")
    create.set_defaults(command=cmd_account_create)
    quota = account.add_parser("set-quota", help="override the default quota of one account")
    quota.add_argument("account_id")
    quota.add_argument(
        "--images", type=int, default=None, help="most non-ceased images (default: unchanged)"
    )
    quota.add_argument(
        "--gb", type=int, default=None, help="most GB of non-ceased images (default: unchanged)"
    )
    quota.add_argument("--json", action="store_true")
    quota.set_defaults(command=cmd_account_set_quota)
    for action, summary in (
        ("disable", "disable an account: its secret and tokens stop working at once"),
        ("enable", "enable a disabled account again (its old tokens stay revoked)"),
    ):
        toggle = account.add_parser(action, help=summary)
        toggle.add_argument("account_id")
        toggle.add_argument("--json", action="store_true")
        toggle.set_defaults(command=cmd_account_toggle, action=action)
    rotate = account.add_parser(
        "rotate-secret", help="a new secret (shown once); the old one and its tokens stop working"
    )
    rotate.add_argument("account_id")
    rotate.add_argument("--json", action="store_true")
    rotate.set_defaults(command=cmd_account_rotate_secret)


def _add_instance_commands(sub: Any) -> None:
    instance = sub.add_parser("instance", help="the stand-in compute inventory")
    actions = instance.add_subparsers(required=True)
    add = actions.add_parser("add", help="register an instance and its disk")
    add.add_argument("--zone", required=True)
    add.add_argument("--owner", required=True, help="account id")
    add.add_argument("--disk", required=True, type=Path)
    add.add_argument("--status", default="stopped", choices=["stopped", "running"])
    add.add_argument("--name", default="")
    _add_host_arg(add, "the compute host the disk is on; its workers capture it")
    _add_image_attribute_args(add)
    add.add_argument("--json", action="store_true")
    add.set_defaults(command=cmd_instance_add)
    status = actions.add_parser("set-status", help="mark an instance running or stopped")
    status.add_argument("instance_id")
    status.add_argument("status", choices=["stopped", "running"])
    status.set_defaults(command=cmd_instance_set_status)


def _add_image_attribute_args(parser: argparse.ArgumentParser, os_required: bool = False) -> None:
    parser.add_argument("--os-family", required=os_required, default="linux")
    parser.add_argument("--platform", default="linux", choices=["linux", "windows"])
    parser.add_argument("--processor-type", default="64bit", choices=["64bit", "32bit"])
    parser.add_argument("--default-user", default="root")


def _add_image_commands(sub: Any) -> None:
    image = sub.add_parser("image", help="system images").add_subparsers(required=True)
    imp = image.add_parser("import", help="import a disk as a public system image")
    imp.add_argument("--zone", required=True)
    imp.add_argument("--disk", required=True, type=Path)
    imp.add_argument("--name", required=True)
    _add_host_arg(imp, "the compute host whose workers read --disk")
    _add_image_attribute_args(imp, os_required=True)
    imp.add_argument("--json", action="store_true")
    imp.set_defaults(command=cmd_image_import)
    from models.image_lifecycle import OPERATOR_ACTIONS

    for action in OPERATOR_ACTIONS:
        move = image.add_parser(action.value, help=f"{action.value} an image (operator)")
        move.add_argument("image_id")
        move.add_argument("--json", action="store_true")
        move.set_defaults(command=cmd_image_move, action=action)
    verify = image.add_parser("verify", help="recompute an image's checksum from its stored file")
    verify.add_argument("image_id")
    verify.add_argument("--json", action="store_true")
    verify.set_defaults(command=cmd_image_verify)


def _add_job_commands(sub: Any) -> None:
    job = sub.add_parser("job", help="jobs, as the operator sees them").add_subparsers(
        required=True
    )
    show = job.add_parser("show", help="one job of any account, with its host and worker")
    show.add_argument("job_id")
    show.add_argument("--json", action="store_true")
    show.set_defaults(command=cmd_job_show)


@contextmanager
def _transaction(settings: Settings) -> Iterator[Session]:
    """One unit of work for an operator command, on its own short-lived parts."""
    from imagesvc.bootstrap import services_for

    with services_for(settings) as services, services.database.transaction() as session:
        yield session


def _print(data: dict[str, object], as_json: bool) -> None:
    if as_json:
        print(json.dumps(data))
    else:
        for key, value in data.items():
            print(f"{key}: {value}")


def _require_zone(settings: Settings, zone: str) -> None:
    if zone not in settings.zones:
        raise SystemExit(f"imagesvc: zone {zone} is not one of {', '.join(settings.zones)}")


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from imagesvc.metrics import write_metrics_to_dir
    from imagesvc.supervisor import Supervisor

    listen = ["--host", args.host, "--port", str(args.port)]
    supervisor = Supervisor(
        {"api": ["api", *listen], "worker": ["worker"], "scheduler": ["scheduler"]}
    )
    supervisor.listen()  # Ctrl-C from here on: the upgrade finishes, nothing else starts
    cmd_db_upgrade(args, settings)
    if supervisor.stopping:
        return 130
    # The whole service starts here: earlier processes' counters are gone with them.
    write_metrics_to_dir(settings, empty_first=True)
    return supervisor.run()


def cmd_api(args: argparse.Namespace, settings: Settings) -> int:
    from api.app import create_app
    from api.server import serve
    from imagesvc.metrics import write_metrics_to_dir

    write_metrics_to_dir(settings)
    serve(create_app(settings), host=args.host, port=args.port)
    return 0


def cmd_worker(args: argparse.Namespace, settings: Settings) -> int:
    from imagesvc.metrics import write_metrics_to_dir

    if args.host is not None:
        settings = settings.model_copy(update={"compute_host": args.host})
    settings.ensure_dirs()
    write_metrics_to_dir(settings)  # before any job metric is touched

    from celery.signals import worker_process_shutdown

    from imagesvc.bootstrap import bootstrap
    from imagesvc.metrics import forget_exited_process
    from workers.celery_app import worker_argv
    from workers.tasks import register_tasks, worker_services

    concurrency = args.concurrency or settings.worker_concurrency
    name = f"imagesvc-{settings.compute_host}-{os.getpid()}"
    argv = worker_argv(settings, concurrency, args.pool, name)
    _keep_celery_off_logging()
    _worker_stop_signals()
    # Celery sends this as each pool process exits, naming it.
    worker_process_shutdown.connect(lambda pid=None, **_: forget_exited_process(pid), weak=False)
    services = bootstrap(settings)
    register_tasks(services.celery, lambda: worker_services(settings))
    services.celery.worker_main(argv)
    return 0


def cmd_scheduler(args: argparse.Namespace, settings: Settings) -> int:
    """Celery beat with its schedule in memory: any number may run, on any data dir.

    The sweeps it asks for are safe to run concurrently, so two schedulers only
    ask more often; a restarted one starts its intervals afresh.
    """
    from celery.beat import Scheduler

    from imagesvc.bootstrap import bootstrap

    settings.ensure_dirs()
    _keep_celery_off_logging()
    beat = bootstrap(settings).celery.Beat(
        scheduler=Scheduler, loglevel=settings.log_level, quiet=True
    )
    beat.install_sync_handler = _exit_on_stop_signal
    beat.run()
    return 0


def _exit_on_stop_signal(service: object) -> None:
    """Celery beat's own SIGTERM/SIGINT handler closes the scheduler (its broker connection)
    inside the handler, in the middle of whatever beat was doing, a send included: an error
    there is logged with its traceback. This handler only raises SystemExit, once; beat's
    loop then closes the scheduler in its ``finally``. Under ``imagesvc up`` SIGINT stays
    ignored: the supervisor sends SIGTERM."""

    def stop(signum: int, frame: object) -> None:
        for sig in _STOP_SIGNALS:  # a second signal cannot cut the clean-up
            signal.signal(sig, _ignore_signal)  # (not SIG_IGN: one may be due already)
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, stop)


def _ignore_signal(signum: int, frame: object) -> None:
    """A handler that does nothing."""


def _worker_stop_signals() -> None:
    """How the worker takes SIGTERM and SIGINT (Celery's handlers, adjusted before it installs
    them): its "Warm shutdown" notice is a log line in the configured format instead of a
    print; the embedded broker stops waiting for messages at once (an idle worker stops
    within a polling interval); under ``imagesvc up`` (SIGINT ignored) SIGINT stays ignored.
    A running job is still finished, or given back, as Celery's warm shutdown does."""
    import functools

    from celery.apps import worker as celery_worker
    from celery.signals import worker_shutting_down

    celery_worker.install_worker_term_handler = functools.partial(
        celery_worker.install_worker_term_handler, verbose=False
    )
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        celery_worker.install_worker_int_handler = lambda *args, **kwargs: None
    else:
        celery_worker.install_worker_int_handler = functools.partial(
            celery_worker.install_worker_int_handler, verbose=False
        )
    worker_shutting_down.connect(_on_worker_shutting_down, weak=False)


def _on_worker_shutting_down(sig: str, how: str, exitcode: int, **_: object) -> None:
    from workers import embedded_broker

    embedded_broker.stop_waiting()
    log.info("%s shutdown: running jobs finish first", how, extra={"signal": sig})


def _keep_celery_off_logging() -> None:
    """Celery configures no logging when a ``setup_logging`` receiver exists: ours is done."""
    from celery.signals import setup_logging

    setup_logging.connect(lambda **_: None, weak=False)


def cmd_db_upgrade(args: argparse.Namespace, settings: Settings) -> int:
    from models.migrate import upgrade

    settings.ensure_dirs()
    upgrade(settings.resolved_database_url)
    return 0


def cmd_account_create(args: argparse.Namespace, settings: Settings) -> int:
    from models.accounts import create_account

    with _transaction(settings) as session:
        credentials = create_account(session, args.name)
    _print_credentials(credentials, args.json)
    return 0


def _print_credentials(credentials: Credentials, as_json: bool) -> None:
    """An account's api key and secret: shown once, the secret is stored hashed."""
    _print(
        {
            "account_id": credentials.account_id,
            "api_key": credentials.api_key,
            "secret": credentials.secret,
        },
        as_json,
    )


def cmd_account_toggle(args: argparse.Namespace, settings: Settings) -> int:
    from models.accounts import disable_account, enable_account

    toggle = disable_account if args.action == "disable" else enable_account
    with _transaction(settings) as session:
        account = toggle(session, args.account_id)
        disabled = account.disabled_at is not None
    _print({"account_id": args.account_id, "disabled": disabled}, args.json)
    return 0


def cmd_account_rotate_secret(args: argparse.Namespace, settings: Settings) -> int:
    from models.accounts import rotate_secret

    with _transaction(settings) as session:
        credentials = rotate_secret(session, args.account_id)
    _print_credentials(credentials, args.json)
    return 0


def cmd_instance_add(args: argparse.Namespace, settings: Settings) -> int:
    from models.instances import NewInstance, add_instance
    from models.states import InstanceStatus, Platform, ProcessorType
    from workers.system_images import inspect_disk

    _require_zone(settings, args.zone)
    disk = args.disk.resolve()
    disk_format, disk_size = inspect_disk(disk)
    new = NewInstance(
        zone=args.zone,
        owner=args.owner,
        disk_path=str(disk),
        disk_format=disk_format.value,
        disk_size=disk_size,
        status=InstanceStatus(args.status),
        instance_name=args.name,
        os_family=args.os_family,
        platform=Platform(args.platform),
        processor_type=ProcessorType(args.processor_type),
        default_user=args.default_user,
        host=args.host,
    )
    with _transaction(settings) as session:
        instance_id = add_instance(session, new).instance_id
    _print({"instance_id": instance_id}, args.json)
    return 0


def cmd_instance_set_status(args: argparse.Namespace, settings: Settings) -> int:
    from models.instances import set_instance_status
    from models.states import InstanceStatus

    with _transaction(settings) as session:
        set_instance_status(session, args.instance_id, InstanceStatus(args.status))
    return 0


def cmd_image_import(args: argparse.Namespace, settings: Settings) -> int:
    from imagesvc.bootstrap import services_for
    from models.images import SystemImageSpec
    from workers.system_images import import_system_image

    _require_zone(settings, args.zone)
    settings.ensure_dirs()
    spec = SystemImageSpec(
        zone=args.zone,
        image_name=args.name,
        os_family=args.os_family,
        platform=args.platform,
        processor_type=args.processor_type,
        default_user=args.default_user,
        host=args.host,
    )
    with services_for(settings) as services:
        image_id = import_system_image(services, args.disk.resolve(), spec)
    _print({"image_id": image_id}, args.json)
    return 0


def cmd_account_set_quota(args: argparse.Namespace, settings: Settings) -> int:
    from models.quotas import quota_of, set_quota, usage_of

    if (args.images is not None and args.images < 0) or (args.gb is not None and args.gb < 0):
        raise SystemExit("imagesvc: quotas are counts, 0 or more")
    default = settings.default_quota
    with _transaction(settings) as session:
        set_quota(session, args.account_id, args.images, args.gb)
        quota = quota_of(session, args.account_id, default)
        usage = usage_of(session, args.account_id)
    _print(
        {
            "account_id": args.account_id,
            "quota_images": quota.images,
            "quota_gb": quota.gb,
            "images": usage.images,
            "gb": usage.gb,
        },
        args.json,
    )
    return 0


def cmd_image_move(args: argparse.Namespace, settings: Settings) -> int:
    from api.schemas import ImageOut
    from models.image_lifecycle import operator_move

    with _transaction(settings) as session:
        image = ImageOut.model_validate(operator_move(session, args.image_id, args.action))
    if args.json:
        print(image.model_dump_json())
    else:
        print(f"{image.image_id}: {image.status}")
    return 0


def cmd_job_show(args: argparse.Namespace, settings: Settings) -> int:
    from api.schemas import OperatorJobOut
    from models.jobs import find_job

    with _transaction(settings) as session:
        job = OperatorJobOut.from_job(find_job(session, args.job_id))
    if args.json:
        print(job.model_dump_json())
    else:
        _print(job.model_dump(mode="json"), as_json=False)
    return 0


def _stored_checksum(settings: Settings, file_name: str, algorithm: str) -> str:
    """The checksum of the store's object ``file_name``: a local file skips its holes, an
    object in S3 is read as a stream (an unreadable one is an OSError, as a file's is)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from workers.checksum import checksum_file, checksum_stream
    from workers.image_store import open_store

    store = open_store(settings.store_url, settings.data_dir)
    path = store.local_path(file_name)
    if path is not None:
        return checksum_file(path, algorithm)
    try:
        with store.reader(file_name) as stream:
            return checksum_stream(stream, algorithm)
    except (BotoCoreError, ClientError) as exc:
        raise OSError(errno.EIO, str(exc)) from exc


def cmd_image_verify(args: argparse.Namespace, settings: Settings) -> int:
    """Recompute the checksum of an image's stored file; exit 0 if it matches, 1 if not."""
    from models.errors import InvalidParameter, ResourceNotFound
    from models.tables import Image
    from workers.checksum import ALGORITHMS

    with _transaction(settings) as session:
        image = session.get(Image, args.image_id)
        if image is None:
            raise ResourceNotFound(f"image {args.image_id} not found")
        file_name, algorithm, recorded = image.file_name, image.checksum_algorithm, image.checksum
    if not file_name or algorithm not in ALGORITHMS:
        raise InvalidParameter(f"image {args.image_id} has no stored file with a checksum")
    try:
        recomputed = _stored_checksum(settings, file_name, algorithm)
    except OSError as exc:
        raise InvalidParameter(
            f"image {args.image_id}: stored file unreadable: {exc.strerror}"
        ) from exc
    matches = recomputed == recorded
    _print(
        {
            "image_id": args.image_id,
            "checksum_algorithm": algorithm,
            "checksum": recorded,
            "recomputed": recomputed,
            "matches": matches,
        },
        args.json,
    )
    return 0 if matches else 1
