"""imagectl, run as users run it: a separate process against ``imagesvc api`` on a real port."""

from __future__ import annotations

import argparse
import json
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from imagesvc import cli, imagectl
from imagesvc.bootstrap import Services
from imagesvc.help_format import all_parsers
from tests.support.disks import MiB, make_raw_disk
from tests.support.tenants import Account, register_instance


class Imagectl:
    """Runs ``imagectl`` with a clean environment and a config directory of its own."""

    def __init__(self, home: Path, **env: str) -> None:
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGESVC_")}
        self.env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / "config"), **env)
        installed = Path(sys.executable).with_name("imagectl")
        assert installed.exists(), "the imagectl console script is not installed"
        self.program = str(installed)

    def __call__(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [self.program, *argv],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def json(self, *argv: str) -> Any:
        result = self(*argv, "--json")
        assert result.returncode == 0, result
        return json.loads(result.stdout)


@pytest.fixture
def imagectl_run(api_url: str, account: Account, tmp_path: Path) -> Imagectl:
    return Imagectl(
        tmp_path,
        IMAGESVC_URL=api_url,
        IMAGESVC_API_KEY=account.api_key,
        IMAGESVC_SECRET=account.secret,
    )


def new_instance(services: Services, account: Account, tmp_path: Path) -> tuple[str, Path]:
    disk = make_raw_disk(tmp_path / f"disk-{secrets.token_hex(3)}.raw", size=2 * MiB)
    return register_instance(services.database, account.account_id, disk), disk


def test_capture_with_wait_shows_progress_and_exits_0(
    imagectl_run: Imagectl, services: Services, account: Account, tmp_path: Path
) -> None:
    instance, _ = new_instance(services, account, tmp_path)
    result = imagectl_run("images", "capture", "--instance", instance, "--name", "web", "--wait")
    assert result.returncode == 0, result
    assert "100%" in result.stderr and "successful" in result.stderr, result.stderr
    assert "successful" in result.stdout and "image_id" in result.stdout, result.stdout

    [image] = imagectl_run.json("images", "list", "--provider", "self")
    assert (image["image_name"], image["status"], image["size"]) == ("web", "available", 1)
    table = imagectl_run("images", "list")
    assert image["image_id"] in table.stdout and "web" in table.stdout, table.stdout


def test_a_failing_capture_with_wait_exits_non_zero_with_the_jobs_error(
    imagectl_run: Imagectl, services: Services, account: Account, tmp_path: Path
) -> None:
    instance, disk = new_instance(services, account, tmp_path)
    disk.unlink()
    result = imagectl_run("images", "capture", "--instance", instance, "--wait", "--json")
    assert result.returncode == 1, result
    job = json.loads(result.stdout)
    assert job["status"] == "failed" and job["error"]["code"], job
    assert job["error"]["code"] in result.stderr and instance in result.stderr, result.stderr


def test_rename_delete_recover_and_the_job_commands(
    imagectl_run: Imagectl, services: Services, account: Account, tmp_path: Path
) -> None:
    instance, _ = new_instance(services, account, tmp_path)
    capture = imagectl_run.json("images", "capture", "--instance", instance)
    assert capture["status"] == "pending" and capture["image_id"].startswith("img-")
    done = imagectl_run.json("jobs", "wait", capture["job_id"])
    assert done["status"] == "successful"
    image_id = capture["image_id"]

    renamed = imagectl_run.json("images", "modify", image_id, "--name", "renamed")
    assert renamed["status"] == "successful"
    [image] = imagectl_run.json("images", "list", "--image", image_id)
    assert image["image_name"] == "renamed"

    deleted = imagectl_run.json("images", "delete", image_id, "--wait")
    assert deleted["status"] == "successful" and deleted["action"] == "DeleteImages"
    assert imagectl_run.json("images", "list", "--image", image_id, "--status", "deleted")
    recovered = imagectl_run.json("images", "recover", image_id, "--wait")
    assert recovered["status"] == "successful"

    listed = imagectl_run.json("jobs", "list", "--action", "DeleteImages")
    assert [job["job_id"] for job in listed] == [deleted["job_id"]]
    shown = imagectl_run.json("jobs", "show", deleted["job_id"])
    assert shown == deleted
    table = imagectl_run("jobs", "list")
    assert deleted["job_id"] in table.stdout and "RecoverImages" in table.stdout, table.stdout


def test_login_saves_the_credentials_privately_for_later_commands(
    api_url: str, account: Account, tmp_path: Path
) -> None:
    run = Imagectl(tmp_path)
    login = run("login", "--url", api_url, "--api-key", account.api_key, "--secret", account.secret)
    assert login.returncode == 0, login
    saved = tmp_path / "config" / "imagesvc" / "config.json"
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert json.loads(saved.read_text())["api_key"] == account.api_key
    assert run.json("jobs", "list") == []
    wrong = run("jobs", "list", "--secret", "not-the-secret")
    assert wrong.returncode == 1 and "1200" in wrong.stderr, wrong

    refused = Imagectl(tmp_path / "elsewhere")(
        "login", "--url", api_url, "--api-key", account.api_key, "--secret", "wrong"
    )
    assert refused.returncode == 1, refused
    assert not (tmp_path / "elsewhere" / "config" / "imagesvc" / "config.json").exists()


def test_without_credentials_it_says_how_to_give_them(tmp_path: Path) -> None:
    result = Imagectl(tmp_path)("images", "list")
    assert result.returncode == 2
    assert "imagectl login" in result.stderr and "IMAGESVC_API_KEY" in result.stderr


@pytest.mark.parametrize("parser", [imagectl.build_parser(), cli.build_parser()])
def test_every_option_of_both_commands_says_its_default(parser: argparse.ArgumentParser) -> None:
    for each in all_parsers(parser):
        shown = " ".join(each.format_help().split())
        for action in each._actions:
            if action.option_strings and not isinstance(action, argparse._HelpAction):
                text = action.help or ""
                assert "default" in text or "required" in text, (each.prog, action.dest)
                assert " ".join(text.split()) in shown, (each.prog, action.dest)
