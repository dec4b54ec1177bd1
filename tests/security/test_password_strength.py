"""Weak and invisible passwords are refused with a reason in plain words; passwords that
cannot be encoded are a 4xx, never a 500 (issue 9, items 8 and 12)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import httpx
import pytest

from conductor_api.security.passwords import check_password_rules
from tests.conftest import PASSWORD, Account, bearer, login, tokens
from tests.e2e.server import cli_path
from tests.test_cli import Cli, one_line_error

PASSWORD_URL = "/api/v1/auth/password"

WEAK = {
    "one repeated character": "aaaaaaaaaaaaaaa",
    "digits in sequence": "123456789012345",
    "a common word repeated": "passwordpassword",
    "a common password decorated": "Password1234567",
    "a keyboard walk": "qwertyuiopasdfgh",
}
INVISIBLE = {
    "fifteen spaces": " " * 15,
    "fifteen zero-width spaces": "\u200b" * 15,
    "fifteen Hangul fillers": "\u3164" * 15,
    "tabs are control characters, spaces and no-break spaces": " \u00a0" * 8,
}


async def change(client: httpx.AsyncClient, access: str, new: str) -> httpx.Response:
    """POST /auth/password from PASSWORD to `new`."""
    return await client.post(
        PASSWORD_URL,
        json={"current_password": PASSWORD, "new_password": new},
        headers=bearer(access),
    )


class TestWeakPasswords:
    async def test_refused_with_a_reason(self, client: httpx.AsyncClient, alice: Account) -> None:
        access = (await tokens(client))["access_token"]
        for name, password in {**WEAK, **INVISIBLE}.items():
            response = await change(client, access, password)
            assert response.status_code == 422, (name, response.text)
            body = response.json()
            assert body["code"] == "password_rejected", name
            detail = body["detail"]
            assert detail.startswith(("This password", "Password must contain visible")), detail
        # Nothing changed: the old password still signs in.
        assert (await login(client)).status_code == 200

    async def test_details_in_plain_words(self, client: httpx.AsyncClient, alice: Account) -> None:
        access = (await tokens(client))["access_token"]
        repeated = (await change(client, access, "aaaaaaaaaaaaaaa")).json()["detail"]
        assert "too easy to guess" in repeated and "Repeats" in repeated
        blank = (await change(client, access, "\u200b" * 15)).json()["detail"]
        assert (
            blank == "Password must contain visible characters, not only spaces or invisible ones"
        )

    async def test_strong_passwords_still_pass(
        self, client: httpx.AsyncClient, alice: Account
    ) -> None:
        access = (await tokens(client))["access_token"]
        response = await change(client, access, "violet tugboat ladder 9 seasons")
        assert response.status_code == 204, response.text

    @pytest.mark.parametrize(
        "password",
        [
            PASSWORD,
            "a long passphrase here",
            "an entirely new passphrase",
            "Sup3r-Secret-Value-123",
            "incorrect mule battery paperclip",
        ],
    )
    def test_project_passwords_pass(self, password: str) -> None:
        check_password_rules(password, 15, "alice")

    def test_weak_prefix_is_scored_not_the_whole_of_a_long_password(self) -> None:
        # A long strong password is checked quickly: only its first 40 characters are scored.
        check_password_rules("Tq9#vL2mWx8!pZ4 correct horse battery staple " * 20, 15)

    @pytest.mark.parametrize(
        ("username", "password"),
        [
            ("straßenbahnfahrerin", "STRASSENBAHNFAHRERIN"),  # the same name, case-folded
            ("nightingale-sings-loud", "\uff2e\uff29\uff27\uff28\uff34ingale-sings-loud"),
        ],
        ids=["folded", "fullwidth"],
    )
    def test_the_username_in_another_form_is_the_username(
        self, username: str, password: str
    ) -> None:
        with pytest.raises(Exception, match="must not be the username"):
            check_password_rules(password, 15, username)


class TestUnencodablePasswords:
    @pytest.mark.parametrize("field", ["current_password", "new_password"])
    async def test_lone_surrogate_in_a_password_change(
        self, client: httpx.AsyncClient, alice: Account, field: str
    ) -> None:
        access = (await tokens(client))["access_token"]
        values = {"current_password": PASSWORD, "new_password": "an entirely new passphrase"}
        values[field] = "an entirely \\ud800 new passphrase"
        body = "{" + ", ".join(f'"{k}": "{v}"' for k, v in values.items()) + "}"
        response = await client.post(
            PASSWORD_URL,
            content=body,
            headers={**bearer(access), "Content-Type": "application/json"},
        )
        assert 400 <= response.status_code < 500, response.text

    def test_rule_refuses_a_lone_surrogate(self) -> None:
        with pytest.raises(Exception, match="valid text"):
            check_password_rules("correct horse \ud800 staple", 15)


class TestCliPasswords:
    @pytest.fixture
    def cli(self, tmp_path: Path) -> Cli:
        """The command on an empty data directory."""
        return Cli(tmp_path / "data")

    def test_stdin_that_is_not_utf8(self, cli: Cli) -> None:
        result = subprocess.run(
            [cli_path(), "users", "create", "bob", "--password-stdin"],
            input=b"correct horse \xed\xa0\x80 staple\n",
            env=cli.env,
            cwd=cli.data_dir.parent,
            capture_output=True,
            timeout=60,
        )
        decoded = subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout.decode(), result.stderr.decode()
        )
        one_line_error(decoded, "valid text")

    def test_weak_password_refused_by_users_create(self, cli: Cli) -> None:
        one_line_error(
            cli("users", "create", "bob", "--password-stdin", stdin="passwordpassword\n"),
            "too easy to guess",
        )
        assert (
            cli("users", "create", "bob", "--password-stdin", stdin=PASSWORD + "\n").returncode == 0
        )
