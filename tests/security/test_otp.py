"""TOTP and recovery codes as pure functions: the forms a person types, drift, the URI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pyotp
import pytest

from conductor_api.security import otp
from conductor_api.security.encryption import DecryptionError, SecretBox

BOUNDARY = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)  # a multiple of 30 s


class TestParsing:
    @pytest.mark.parametrize("typed", ["123456", "123 456", " 123456 ", "12 34 56", "123\u00a0456"])
    def test_totp_forms_people_type(self, typed: str) -> None:
        assert otp.parse_totp(typed) == otp.TotpCode("123456")

    @pytest.mark.parametrize(
        "typed", ["12345", "1234567", "12345a", "abcdef", "123-456", "", "١٢٣٤٥٦", "123456\x00"]
    )
    def test_totp_refuses_the_rest(self, typed: str) -> None:
        assert otp.parse_totp(typed) is None

    def test_recovery_forms_people_type(self) -> None:
        code = otp.new_recovery_codes()[0]
        canonical = otp.RecoveryCode(code.replace("-", ""))
        for typed in (
            code,
            code.upper(),
            code.replace("-", ""),
            f" {code.upper()} ",
            code.replace("-", " - "),
        ):
            assert otp.parse_recovery(typed) == canonical, typed

    @pytest.mark.parametrize(
        "typed", ["abcde-fghi", "abcde-fghijk", "abcde_fghij", "ilouu-00000", ""]
    )
    def test_recovery_refuses_the_rest(self, typed: str) -> None:
        assert otp.parse_recovery(typed) is None

    def test_the_two_kinds_cannot_be_confused(self) -> None:
        assert isinstance(otp.parse_any("123 456"), otp.TotpCode)
        assert isinstance(otp.parse_any(otp.new_recovery_codes()[0]), otp.RecoveryCode)
        assert otp.parse_any("1234") is None


class TestTotp:
    def test_uri_is_what_authenticator_apps_read(self) -> None:
        secret = otp.new_secret()
        uri = urlsplit(otp.provisioning_uri(secret, "alice"))
        assert (uri.scheme, uri.netloc, uri.path) == ("otpauth", "totp", "/Conductor:alice")
        query = {k: v[0] for k, v in parse_qs(uri.query).items()}
        assert query == {
            "secret": secret,
            "issuer": "Conductor",
            "algorithm": "SHA1",
            "digits": "6",
            "period": "30",
        }

    def test_one_step_of_drift_either_way_at_a_step_boundary(self) -> None:
        secret = otp.new_secret()
        totp = pyotp.TOTP(secret)
        step = otp.time_step(BOUNDARY)
        assert step * 30 == BOUNDARY.timestamp()
        for offset in (-1, 0, 1):
            code = otp.TotpCode(totp.at(BOUNDARY + timedelta(seconds=30 * offset)))
            assert otp.matching_step(secret, code, BOUNDARY) == step + offset
        for offset in (-2, 2):
            code = otp.TotpCode(totp.at(BOUNDARY + timedelta(seconds=30 * offset)))
            assert otp.matching_step(secret, code, BOUNDARY) is None
        # One second before the boundary is the previous step.
        before = BOUNDARY - timedelta(seconds=1)
        assert otp.time_step(before) == step - 1

    def test_recovery_codes_are_ten_distinct_and_hashed_with_a_key(self) -> None:
        codes = otp.new_recovery_codes()
        assert len(set(codes)) == 10
        parsed = otp.parse_recovery(codes[0])
        assert parsed is not None
        one, other = otp.recovery_hash(b"k" * 32, parsed), otp.recovery_hash(b"j" * 32, parsed)
        assert one != other and len(one) == 64 and parsed.value not in one


class TestEncryption:
    def test_round_trip_bound_to_its_row_key_and_purpose(self) -> None:
        box = SecretBox(b"x" * 32, b"totp")
        sealed = box.seal(b"JBSWY3DP", b"totp:alice")
        assert b"JBSWY3DP" not in sealed
        assert box.open(sealed, b"totp:alice") == b"JBSWY3DP"
        assert box.seal(b"JBSWY3DP", b"totp:alice") != sealed  # a fresh nonce each time
        for wrong_box, aad, value in (
            (box, b"totp:bob", sealed),
            (SecretBox(b"y" * 32, b"totp"), b"totp:alice", sealed),
            (SecretBox(b"x" * 32, b"other purpose"), b"totp:alice", sealed),
            (box, b"totp:alice", sealed[:-1] + bytes([sealed[-1] ^ 1])),
            (box, b"totp:alice", b"short"),
        ):
            with pytest.raises(DecryptionError):
                wrong_box.open(value, aad)
