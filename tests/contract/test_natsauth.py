"""NATS credentials and TLS settings: one way to log in, errors that name the
variable, options nats-py understands, and URLs that never show a secret."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from edge.settings import load_edge_settings
from switchboard.contract.natsauth import NatsCredentials, connect_options, redact
from switchboard.contract.settings import SettingsError
from tests.chart.test_nats_tls import make_certificates


def test_each_way_to_log_in_becomes_its_nats_py_option(tmp_path: Path) -> None:
    seed, creds = tmp_path / "user.nk", tmp_path / "user.creds"
    assert connect_options(NatsCredentials()) == {}
    assert connect_options(NatsCredentials(nats_user="sb-edge", nats_password="pw")) == {
        "user": "sb-edge",
        "password": "pw",
    }
    assert connect_options(NatsCredentials(nats_token="t0k")) == {"token": "t0k"}
    assert connect_options(NatsCredentials(nats_nkey_seed_file=seed)) == {"nkeys_seed": str(seed)}
    assert connect_options(NatsCredentials(nats_creds_file=creds)) == {
        "user_credentials": str(creds)
    }


def test_a_ca_file_turns_tls_on_and_a_client_certificate_is_loaded(tmp_path: Path) -> None:
    make_certificates(tmp_path)
    options = connect_options(
        NatsCredentials(
            nats_tls_ca_file=tmp_path / "ca.crt",
            nats_tls_cert_file=tmp_path / "tls.crt",
            nats_tls_key_file=tmp_path / "tls.key",
        )
    )
    assert isinstance(options["tls"], ssl.SSLContext)
    assert options["tls"].verify_mode == ssl.CERT_REQUIRED


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"SB_EDGE_NATS_USER": "u"}, "SB_EDGE_NATS_USER and SB_EDGE_NATS_PASSWORD"),
        (
            {"SB_EDGE_NATS_USER": "u", "SB_EDGE_NATS_PASSWORD": "p", "SB_EDGE_NATS_TOKEN": "t"},
            "SB_EDGE_NATS_USER and SB_EDGE_NATS_TOKEN",
        ),
        ({"SB_EDGE_NATS_TLS_CERT_FILE": "/c.pem"}, "SB_EDGE_NATS_TLS_CERT_FILE"),
    ],
)
def test_bad_combinations_fail_naming_the_variables(
    env: dict[str, str], named: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SB_EDGE_JWT_SECRET", "x" * 32)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=named):
        load_edge_settings()


def test_secrets_never_print() -> None:
    settings = NatsCredentials(nats_user="sb-edge", nats_password="hunter2")
    assert "hunter2" not in repr(settings)
    urls = "nats://sb-edge:hunter2@a:4222,nats://t0k@b:4222,nats://c:4222"
    assert redact(urls) == "nats://sb-edge:***@a:4222,nats://***@b:4222,nats://c:4222"
