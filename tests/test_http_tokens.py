"""`agentfold token create / list / revoke` and the token records behind them."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

import agentfold
from agentfold.cli import main
from agentfold.cli.token import parse_expiry
from agentfold.errors import InvalidInput, InvalidToken, TokenRevoked
from agentfold.tokens import TOKENS_STREAM, TokenRegistry


def test_the_cli_creates_lists_and_revokes_tokens(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tokens.db'}"
    runner = CliRunner()
    created = runner.invoke(
        main,
        [
            "token",
            "create",
            "researcher",
            "--write",
            "agent-r-*",
            "--read",
            "order-*",
            "--read",
            "shared-*",
            "--workflows",
            "start,signal",
            "--expires",
            "30d",
            "--store",
            url,
            "--json",
        ],
    )
    assert created.exit_code == 0, created.output
    issued = json.loads(created.output)
    assert issued["token"].startswith(f"aft_{issued['token_id']}_")
    assert issued["write"] == ["agent-r-*"] and issued["read"] == ["order-*", "shared-*"]
    assert issued["workflows"] == ["signal", "start"] and issued["status"] == "active"

    listed = json.loads(runner.invoke(main, ["token", "list", "--store", url, "--json"]).output)
    assert [item["token_id"] for item in listed] == [issued["token_id"]]
    assert issued["token"].split("_")[2] not in json.dumps(listed)  # the secret is never shown again
    table = runner.invoke(main, ["token", "list", "--store", url])
    assert table.exit_code == 0 and "researcher" in table.output

    revoked = runner.invoke(main, ["token", "revoke", issued["token_id"], "--store", url])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    again = runner.invoke(main, ["token", "revoke", issued["token_id"], "--store", url])
    assert again.exit_code == 2 and "no active token" in again.output
    bad = runner.invoke(main, ["token", "create", "x", "--workflows", "delete", "--write", "a", "--store", url])
    assert bad.exit_code == 2 and "delete" in bad.output
    nothing = runner.invoke(main, ["token", "create", "x", "--store", url])
    assert nothing.exit_code == 2 and "--write or --read" in nothing.output


def test_expiry_is_a_duration_or_a_time() -> None:
    assert parse_expiry("90s", 1_000_000) == 91_000_000
    assert parse_expiry("2d", 0) == 2 * 86400 * 1_000_000
    assert parse_expiry("2030-01-01T00:00:00Z", 0) == 1_893_456_000_000_000
    assert parse_expiry("2030-01-01T00:00:00", 0) == 1_893_456_000_000_000  # no zone: UTC
    with pytest.raises(click.BadParameter):
        parse_expiry("soon", 0)


async def test_only_the_hash_is_stored_and_checks_are_exact(tmp_path: Path) -> None:
    async with await agentfold.connect(f"sqlite:///{tmp_path / 'hash.db'}") as store:
        registry = TokenRegistry(store)
        issued = await registry.create("a", write=["agent-a-*"])
        secret = issued.token.split("_")[2]
        assert len(secret) == 64  # 256 bits, hex
        stored = [event async for event in store.read_stream(TOKENS_STREAM)]
        assert secret not in json.dumps([event.data for event in stored])
        assert stored[0].data["secret_sha256"] == hashlib.sha256(secret.encode()).hexdigest()
        assert (await registry.authenticate(issued.token)).name == "a"
        other_process = TokenRegistry(store)
        assert (await other_process.authenticate(issued.token)).token_id == issued.info.token_id
        await registry.revoke("a")
        with pytest.raises(TokenRevoked):
            await other_process.authenticate(issued.token)
        for bad in ("", "aft_", issued.token[:-1], issued.token + "0", issued.token.replace("aft_", "AFT_")):
            with pytest.raises(InvalidToken):
                await registry.authenticate(bad)
        with pytest.raises(InvalidInput):
            await registry.create("", write=["x"])
        with pytest.raises(InvalidInput):
            await registry.create("b", write="agent-*")  # type: ignore[arg-type]
