"""No raw key anywhere but in the one answer that creates it: a gateway process at debug log
level, keys made and rotated by the CLI and over HTTP, used, misused (a wrong key, a key one
character off, a revoked key, a model out of scope); then the log, every error body, the CLI's
lists, the usage report and every table of the database are searched for any key's secret."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.access.instances import run_instance, write_config
from tests.access.test_http import gateway_config
from tests.fakes.timed import Paced, run_paced

pytestmark = pytest.mark.slow


@pytest.fixture
def paced() -> Iterator[Paced]:
    with run_paced() as fake:
        yield fake


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "turnout", *args], capture_output=True, text=True, check=True
    )


async def test_no_raw_key_in_logs_errors_lists_or_ledger(tmp_path: Path, paced: Paced) -> None:
    cfg = gateway_config(tmp_path, paced.url, server={"log_level": "debug"})
    db = cfg["storage"]["database_url"]
    made = cli("keys", "create", "root", "--admin", "--database-url", db)
    admin = made.stdout.strip()
    assert admin.startswith("gw_") and admin not in made.stderr
    user = cli("keys", "create", "user", "--models", "paced", "--database-url", db).stdout.strip()
    secrets = [admin, user]
    seen: list[str] = [made.stderr]
    chat = {"model": "paced", "messages": [{"role": "user", "content": "hi"}]}
    with run_instance(write_config(tmp_path / "t.yaml", cfg)) as gateway:
        async with aiohttp.ClientSession() as http:

            async def call(method: str, path: str, key: str, body: object = None) -> dict:
                headers = {"Authorization": f"Bearer {key}"}
                async with http.request(
                    method, gateway.url + path, json=body, headers=headers
                ) as r:
                    seen.append(await r.text())
                    seen.append(repr(dict(r.headers)))
                    return await r.json() if r.content_type == "application/json" else {}

            await call("POST", "/v1/chat/completions", user, chat)
            await call("POST", "/v1/chat/completions", user, {**chat, "model": "other"})
            off_by_one = user[:-1] + ("A" if user[-1] != "A" else "B")
            await call("POST", "/v1/chat/completions", off_by_one, chat)
            await call("GET", "/v1/models", "sk-" + user[3:], None)
            created = await call("POST", "/v1/keys", admin, {"name": "api"})
            secrets.append(created["key"])
            seen.append("")  # the creating answer itself may show it: drop it from what is searched
            seen[-3] = seen[-3].replace(created["key"], "")
            rotated = await call("POST", "/v1/keys/api/rotate", admin, {"grace": "1s"})
            secrets.append(rotated["key"])
            seen[-2] = seen[-2].replace(rotated["key"], "")
            await call("POST", "/v1/chat/completions", rotated["key"], chat)
            await call("DELETE", "/v1/keys/api", admin)
            await call("POST", "/v1/chat/completions", rotated["key"], chat)
            await call("GET", "/v1/keys", admin)
            await call("GET", "/v1/usage", admin)
        gateway.terminate()
        log = gateway.output()
        seen.append(log)
    # the log did record the key events, by prefix
    assert f"key 'api' created ({created['key'][:11]})" in log
    refusals = [line for line in log.splitlines() if "turnout.server: 401 POST" in line]
    assert refusals and "DEBUG" in refusals[0]  # logged at debug, naming the key by its prefix
    assert any(f"The key '{user[:11]}…'" in line for line in refusals)
    seen += [cli("keys", "list", "--database-url", db).stdout]
    seen += [cli("keys", "list", "--json", "--database-url", db).stdout]
    seen += [cli("usage", "--json", "--by", "key", "--database-url", db).stdout]
    with sqlite3.connect(db.removeprefix("sqlite:///")) as conn:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"):
            seen.append(repr(conn.execute(f"SELECT * FROM {table}").fetchall()))
    text = "\n".join(seen)
    for secret in secrets:
        assert secret not in text
        assert secret[11:] not in text  # not even the part after the shown prefix
        assert secret[:11] in text  # the prefix is how keys are named
