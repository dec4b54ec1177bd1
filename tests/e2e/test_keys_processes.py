"""Signing keys with real processes: a verifier that knows only the JWKS URL, rotation
while tokens are in use, and two instances sharing one PostgreSQL key set."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, TEST_KEK
from tests.e2e.server import Server, clean_env, cli_path, create_user

pytestmark = pytest.mark.e2e

API = "/api/v1/auth"
JWKS = "/.well-known/jwks.json"
# A service of its own: it knows the JWKS URL and the contract's claims, nothing else. The
# client as docs/verifying-tokens.md configures it, with the lifespan the test passes.
VERIFIER = """
import sys, jwt
lifespan = float(sys.argv[2]) if len(sys.argv) > 2 else 60
client = jwt.PyJWKClient(sys.argv[1], cache_keys=False, lifespan=lifespan, cooldown_duration=5)
for line in sys.stdin:
    token = line.strip()
    try:
        key = client.get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token, key.key, algorithms=["EdDSA", "ES256"], audience="conductor-android",
            issuer="conductor-api", options={"require": ["exp", "iss", "aud", "sub"]},
        )
        ok = claims.get("typ") == "access"
        print("ok " + claims["sub"] if ok else "refused typ", flush=True)
    except Exception as e:
        print("refused " + type(e).__name__, flush=True)
"""


def login(server: Server) -> dict[str, Any]:
    """Log alice in through `server`."""
    response = httpx.post(
        server.url + API + "/login",
        json={"username": "alice", "password": PASSWORD, "device_name": "Pixel 8"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def me(server: Server, token: str) -> int:
    """The status of GET /auth/me with `token`."""
    return httpx.get(
        server.url + API + "/me", headers={"Authorization": f"Bearer {token}"}
    ).status_code


def kid_of(token: str) -> str:
    """The kid in a token's header."""
    segment = token.split(".")[0]
    header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    return str(header["kid"])


def published(server: Server) -> list[str]:
    """The kids in the server's JWKS."""
    return [k["kid"] for k in httpx.get(server.url + JWKS).json()["keys"]]


def cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """`conductor-api ARGS` as an operator runs it."""
    return subprocess.run(
        [cli_path(), *args], env=clean_env(**env), cwd=cwd, capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip


def tamper(token: str) -> str:
    """The same token with one character of its payload changed."""
    header, payload, signature = token.split(".")
    flipped = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    return f"{header}.{flipped}.{signature}"


def wait_for(check: Any, timeout: float = 10.0) -> float:
    """Poll `check` until true; the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if check():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not true within {timeout}s")


class TestJwksOnlyVerifier:
    def test_accepts_fresh_tokens_and_refuses_tampered_ones(self, tmp_path: Path) -> None:
        env = {"CONDUCTOR_DATA_DIR": str(tmp_path / "data")}
        create_user(tmp_path, env, "alice", PASSWORD)
        with Server(tmp_path, env) as server:
            pair = login(server)
            token = pair["access_token"]
            lines = [token, tamper(token), pair["refresh_token"], token[:-4] + "AAAA"]
            result = subprocess.run(
                [sys.executable, "-c", VERIFIER, server.url + JWKS],
                input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=60,
                check=False, env=clean_env(),
            )  # fmt: skip
        answers = result.stdout.splitlines()
        assert len(answers) == 4, result.stderr
        assert answers[0].startswith("ok ")
        assert all(a.startswith("refused") for a in answers[1:]), answers


class TestVerifierAfterRevocation:
    def test_refuses_the_revoked_key_once_its_copy_expires_and_accepts_the_new_one(
        self, tmp_path: Path
    ) -> None:
        # A leaked key: once the verifier's copy of the set is older than its lifespan, the
        # key's tokens are refused there too (a per-kid cache would keep it for good).
        env = {"CONDUCTOR_DATA_DIR": str(tmp_path / "data"), "KEY_REFRESH_SECONDS": "0.5"}
        create_user(tmp_path, env, "alice", PASSWORD)
        lifespan = 2.0
        with Server(tmp_path, env) as server, subprocess.Popen(
            [sys.executable, "-c", VERIFIER, server.url + JWKS, str(lifespan)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=clean_env(),
        ) as verifier:  # fmt: skip
            assert verifier.stdin is not None and verifier.stdout is not None

            def check(token: str) -> str:
                assert verifier.stdin is not None and verifier.stdout is not None
                verifier.stdin.write(token + "\n")
                verifier.stdin.flush()
                return verifier.stdout.readline().strip()

            leaked = login(server)["access_token"]
            assert check(leaked).startswith("ok ")
            revoked = cli(tmp_path, env, "keys", "revoke", kid_of(leaked))
            assert revoked.returncode == 0, revoked.stderr
            wait_for(lambda: me(server, leaked) == 401)
            fresh = login(server)["access_token"]
            assert kid_of(fresh) != kid_of(leaked)
            time.sleep(lifespan + 0.5)
            assert check(leaked).startswith("refused"), "the revoked key is still trusted"
            assert check(fresh).startswith("ok ")
            verifier.stdin.close()
            verifier.wait(timeout=10)


class TestRotateWhileInUse:
    def test_old_tokens_work_new_tokens_carry_the_new_kid_published_first(
        self, tmp_path: Path
    ) -> None:
        env = {
            "CONDUCTOR_DATA_DIR": str(tmp_path / "data"),
            "KEY_PUBLISH_SECONDS": "2",
            "KEY_REFRESH_SECONDS": "0.5",
        }
        create_user(tmp_path, env, "alice", PASSWORD)
        with Server(tmp_path, env, workers=2) as server:
            old = login(server)["access_token"]
            old_kid = kid_of(old)
            result = cli(tmp_path, env, "keys", "rotate")
            assert result.returncode == 0, result.stderr
            new_kid = result.stdout.split()[1]
            assert new_kid != old_kid
            seen_published = False
            new_token = None
            deadline = time.monotonic() + 15
            while new_token is None and time.monotonic() < deadline:
                # Whichever worker answers: the JWKS is read before each login.
                seen_published = seen_published or new_kid in published(server)
                token = login(server)["access_token"]
                if kid_of(token) == new_kid:
                    assert seen_published, "a token used the new key before the JWKS showed it"
                    new_token = token
                else:
                    assert kid_of(token) == old_kid
                time.sleep(0.1)
            assert new_token is not None
            for token in (old, new_token):
                assert me(server, token) == 200
            assert set(published(server)) >= {old_kid, new_kid}
            listed = cli(tmp_path, env, "keys", "list").stdout.splitlines()
            states = {line.split("\t")[0]: line.split("\t")[2] for line in listed}
            assert states[old_kid] == "previous" and states[new_kid] == "current"


class TestTwoInstancesOnePostgres:
    def test_tokens_cross_instances_through_rotation_and_revocation(
        self, tmp_path: Path, pg_database: str
    ) -> None:
        # No JWT secret and no key in the environment: only the key-encryption key is shared
        # (the JWT secrets the first start generated are in the database, sealed under it).
        shared = {"DATABASE_URL": pg_database, "KEY_ENCRYPTION_KEY": TEST_KEK}
        shared["KEY_REFRESH_SECONDS"] = "1"
        env_a = {**shared, "CONDUCTOR_DATA_DIR": str(tmp_path / "a" / "data")}
        env_b = {**shared, "CONDUCTOR_DATA_DIR": str(tmp_path / "b" / "data")}
        create_user(tmp_path / "a", env_a, "alice", PASSWORD)
        with Server(tmp_path / "a", env_a) as a, Server(tmp_path / "b", env_b) as b:
            from_a, from_b = login(a)["access_token"], login(b)["access_token"]
            assert kid_of(from_a) == kid_of(from_b)
            assert me(b, from_a) == 200 and me(a, from_b) == 200
            # A refresh token of one instance rotates on the other, and back.
            refresh = login(a)["refresh_token"]
            for server in (b, a):
                response = httpx.post(
                    server.url + API + "/refresh", json={"refresh_token": refresh}
                )
                assert response.status_code == 200, response.text
                refresh = response.json()["refresh_token"]

            rotated = cli(tmp_path / "b", env_b, "keys", "rotate", "--now")
            assert rotated.returncode == 0, rotated.stderr
            new_kid = rotated.stdout.split()[1]
            wait_for(lambda: kid_of(login(a)["access_token"]) == new_kid)
            fresh = login(a)["access_token"]
            assert me(b, fresh) == 200 and me(a, fresh) == 200
            assert me(b, from_a) == 200 and me(a, from_b) == 200  # issued before: still good

            revoked = cli(tmp_path / "a", env_a, "keys", "revoke", new_kid)
            assert revoked.returncode == 0, revoked.stderr
            took = wait_for(lambda: me(a, fresh) == 401 and me(b, fresh) == 401)
            assert took < 5
            assert new_kid not in published(a) and new_kid not in published(b)
            after = login(b)["access_token"]
            assert kid_of(after) not in (new_kid, kid_of(from_a))
            assert me(a, after) == 200

    def test_an_instance_with_another_key_refuses_to_start(
        self, tmp_path: Path, pg_database: str
    ) -> None:
        env = {"DATABASE_URL": pg_database, "KEY_ENCRYPTION_KEY": TEST_KEK}
        env_a = {**env, "CONDUCTOR_DATA_DIR": str(tmp_path / "a" / "data")}
        with Server(tmp_path / "a", env_a):
            pass
        before = cli(tmp_path / "a", env_a, "keys", "list").stdout
        # A second instance with no KEY_ENCRYPTION_KEY generates one of its own: refused.
        env_c = {"DATABASE_URL": pg_database, "CONDUCTOR_DATA_DIR": str(tmp_path / "c" / "data")}
        (tmp_path / "c").mkdir()
        result = subprocess.run(
            [cli_path(), "serve", "--port", "1"], env=clean_env(**env_c), cwd=tmp_path / "c",
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "KEY_ENCRYPTION_KEY" in lines[0], result.stderr
        assert "Traceback" not in result.stderr
        assert cli(tmp_path / "a", env_a, "keys", "list").stdout == before
        assert len(before.splitlines()) == 1
