"""How a Switchboard process authenticates to NATS: one set of settings fields
shared by the edge (`SB_EDGE_NATS_*`), the operator (`SB_OPERATOR_NATS_*`) and
the CLI (`SB_NATS_*`), and the `nats.connect` options they turn into.

One way to prove who you are (user and password, token, nkey seed, or a
`.creds` file), plus TLS: a CA to trust, and a client certificate and key when
the server asks for one (mutual TLS).
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class NatsCredentials(BaseModel):
    """Credentials and TLS for one NATS connection (fields shared by the settings)."""

    nats_user: str | None = Field(None, description="NATS user name (with `nats_password`).")
    nats_password: SecretStr | None = Field(None, description="NATS password.")
    nats_token: SecretStr | None = Field(None, description="NATS authentication token.")
    nats_nkey_seed_file: Path | None = Field(None, description="NATS nkey seed file.")
    nats_creds_file: Path | None = Field(
        None, description="NATS `.creds` file (decentralised JWT auth)."
    )
    nats_tls_ca_file: Path | None = Field(
        None, description="CA bundle that signs the NATS server's certificate (turns TLS on)."
    )
    nats_tls_cert_file: Path | None = Field(None, description="Client certificate (mutual TLS).")
    nats_tls_key_file: Path | None = Field(None, description="Client certificate's key.")

    @model_validator(mode="after")
    def _one_identity(self) -> NatsCredentials:
        ways = [
            name
            for name, value in (
                ("nats_user", self.nats_user),
                ("nats_token", self.nats_token),
                ("nats_nkey_seed_file", self.nats_nkey_seed_file),
                ("nats_creds_file", self.nats_creds_file),
            )
            if value is not None
        ]
        if len(ways) > 1:
            raise ValueError(f"choose one way to authenticate to NATS, not {' and '.join(ways)}")
        if (self.nats_user is None) != (self.nats_password is None):
            raise ValueError("nats_user and nats_password go together")
        if (self.nats_tls_cert_file is None) != (self.nats_tls_key_file is None):
            raise ValueError("nats_tls_cert_file and nats_tls_key_file go together")
        return self


def tls_context(credentials: NatsCredentials) -> ssl.SSLContext | None:
    """A client TLS context when a CA or a client certificate is configured."""
    if credentials.nats_tls_ca_file is None and credentials.nats_tls_cert_file is None:
        return None
    context = ssl.create_default_context(
        cafile=str(credentials.nats_tls_ca_file) if credentials.nats_tls_ca_file else None
    )
    if credentials.nats_tls_cert_file is not None and credentials.nats_tls_key_file is not None:
        context.load_cert_chain(
            str(credentials.nats_tls_cert_file), str(credentials.nats_tls_key_file)
        )
    return context


def connect_options(credentials: NatsCredentials) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` (empty: credentials in the URL, or none)."""
    options: dict[str, Any] = {}
    if credentials.nats_user is not None and credentials.nats_password is not None:
        options["user"] = credentials.nats_user
        options["password"] = credentials.nats_password.get_secret_value()
    if credentials.nats_token is not None:
        options["token"] = credentials.nats_token.get_secret_value()
    if credentials.nats_nkey_seed_file is not None:
        options["nkeys_seed"] = str(credentials.nats_nkey_seed_file)
    if credentials.nats_creds_file is not None:
        options["user_credentials"] = str(credentials.nats_creds_file)
    if (context := tls_context(credentials)) is not None:
        options["tls"] = context
    return options


class CliNatsSettings(BaseSettings, NatsCredentials):
    """`SB_NATS_USER`, `SB_NATS_PASSWORD`, ... for `switchboard channel` and friends."""

    model_config = SettingsConfigDict(env_prefix="SB_", extra="ignore")


def cli_connect_options() -> dict[str, Any]:
    """The CLI's `nats.connect` options, from `SB_NATS_*` (credentials in the URL work too)."""
    return connect_options(CliNatsSettings())


def redact(urls: str) -> str:
    """NATS URL(s) fit for logs and errors: any password or token replaced by `***`."""
    return re.sub(r"(//[^:/@,]*:)[^@,]*@|(//)[^:/@,]+@", lambda m: (m[1] or m[2]) + "***@", urls)
