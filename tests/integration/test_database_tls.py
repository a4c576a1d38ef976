"""PostgreSQL secured as in production: a password, over TLS verified against a CA (``sslmode=verify-full``).

One server for the module presents a certificate for localhost and 127.0.0.1 signed by a CA the
test makes, and its pg_hba.conf lets TCP in only with TLS and a password (``hostssl ... scram-sha-256``).
The real ``nlpkit`` connects with libpq's own settings: ``sslmode`` and ``sslrootcert`` in the URL's
query, or the ``PGPASSWORD`` and ``PGSSLROOTCERT`` variables. Each refusal (a wrong password, a
CA that did not sign the server's certificate, a host name the certificate does not name, a
connection without TLS) is one line "Error: ..." naming the cause, exit status 1, in seconds, and
the password is never shown.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlencode

import pytest
from psycopg import sql
from terminal import error_line

from nlpkit.localservices.postgres import PostgresServer, ServerTls
from nlpkit.store import Database, utcnow

pytestmark = pytest.mark.integration

USER, PASSWORD, DATABASE = "reviews_app", "tls-only-S3cret", "reviews"
WRONG_PASSWORD = "not-the-password"
# Longer than a command takes on a busy machine, shorter than a connection waiting out connect_timeout (10 s).
QUICKLY_S = 9


def openssl(*arguments: str | Path) -> None:
    subprocess.run(["openssl", *map(str, arguments)], check=True, capture_output=True)


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed CA: its certificate and its key (EC P-256: quicker to make than RSA)."""
    certificate, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
            "-subj", f"/CN=nlpkit test {name}", "-keyout", key, "-out", certificate)  # fmt: skip
    return certificate, key


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The CA the server's certificate comes from, the server's certificate and key, and another CA."""
    directory = tmp_path_factory.mktemp("tls")
    ca, ca_key = make_ca(directory, "ca")
    other_ca, _ = make_ca(directory, "other-ca")
    request, extensions = directory / "server.csr", directory / "server.ext"
    extensions.write_text("subjectAltName = DNS:localhost, IP:127.0.0.1\n")
    certificate, key = directory / "server.pem", directory / "server-key.pem"
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", "/CN=localhost", "-keyout", key, "-out", request)  # fmt: skip
    openssl("x509", "-req", "-in", request, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "1",
            "-extfile", extensions, "-out", certificate)  # fmt: skip
    return {"ca": ca, "other_ca": other_ca, "certificate": certificate, "key": key}


@pytest.fixture(scope="module")
def tls_server(certificates: dict[str, Path]) -> Iterator[PostgresServer]:
    """The server, with a role that has a password and a database it owns.

    Its directory comes from mkdtemp, as in services_fixtures: as root the server runs as the
    postgres account, which cannot enter pytest's private temporary directory.
    """
    data_dir = Path(tempfile.mkdtemp(prefix="nlpkit-pg-tls-"))
    try:
        with PostgresServer(data_dir, tls=ServerTls(certificates["certificate"], certificates["key"])) as server:
            with server._admin_connection() as connection:
                connection.execute(
                    sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(USER), sql.Literal(PASSWORD))
                )
                connection.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(DATABASE), sql.Identifier(USER))
                )
            yield server
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def url_of(server: PostgresServer, host: str = "localhost", password: str | None = None, **query: str | Path) -> str:
    credentials = f"{USER}:{quote(password, safe='')}" if password else USER
    url = f"postgresql+psycopg://{credentials}@{host}:{server.port}/{DATABASE}"
    return f"{url}?{urlencode(query, safe='/')}" if query else url


def nlpkit(*arguments: str, **variables: str | Path) -> subprocess.CompletedProcess[str]:
    """A real ``nlpkit`` process; libpq's variables (PG*) only those given here."""
    environment = {name: value for name, value in os.environ.items() if not name.startswith("PG")}
    return subprocess.run(
        [sys.executable, "-m", "nlpkit", *arguments],
        capture_output=True,
        text=True,
        env=environment | {name: str(value) for name, value in variables.items()},
        stdin=subprocess.DEVNULL,
        timeout=120,
    )


def prediction(text: str) -> dict[str, object]:
    return {
        "task": "sentiment",
        "model_name": "tiny",
        "model_revision": "r1",
        "backend": "torch",
        "source_topic": "reviews",
        "source_partition": 0,
        "source_offset": 7,
        "source_key": None,
        "source_key_text": None,
        "record_id": "r-7",
        "input_text": text,
        "input_extra": None,
        "label": "positive",
        "score": 0.93,
        "output": {"label": "positive", "score": 0.93},
        "message_timestamp": utcnow(),
        "stored_at": utcnow(),
    }


def test_db_upgrade_and_the_store_work_over_verified_tls_with_a_password(tls_server, certificates):
    verified = url_of(tls_server, sslmode="verify-full", sslrootcert=certificates["ca"])

    upgraded = nlpkit("db", "upgrade", "--database-url", verified, PGPASSWORD=PASSWORD)

    assert upgraded.returncode == 0, upgraded.stderr
    assert "is at revision" in upgraded.stderr, upgraded.stderr
    assert PASSWORD not in upgraded.stdout + upgraded.stderr

    # The password in the URL does as well as PGPASSWORD; the session is encrypted.
    database = Database(url_of(tls_server, password=PASSWORD, sslmode="verify-full", sslrootcert=certificates["ca"]))
    try:
        database.write_batch([prediction("très bon film 🎬")], [])
        with database.engine.connect() as connection:
            (encrypted,) = connection.exec_driver_sql("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()").one()
    finally:
        database.dispose()
    assert encrypted is True

    # The CA from PGSSLROOTCERT instead of the URL; the row comes back through the CLI.
    only_mode = url_of(tls_server, sslmode="verify-full")
    read = nlpkit("results", "--task", "sentiment", "--database-url", only_mode, PGPASSWORD=PASSWORD,
                  PGSSLROOTCERT=certificates["ca"])  # fmt: skip

    assert read.returncode == 0, read.stderr
    rows = [json.loads(line) for line in read.stdout.splitlines()]
    assert [(row["input_text"], row["label"], row["source_offset"]) for row in rows] == [
        ("très bon film 🎬", "positive", 7)
    ]


# "ca" and "other_ca" name files of the certificates fixture.
VERIFIED = {"sslmode": "verify-full", "sslrootcert": "ca"}


@pytest.mark.parametrize(
    ("password", "host", "query", "cause"),
    [
        pytest.param(WRONG_PASSWORD, "localhost", VERIFIED, "password authentication failed", id="wrong-password"),
        pytest.param(
            PASSWORD, "localhost", VERIFIED | {"sslrootcert": "other_ca"}, "certificate verify failed", id="unknown-ca"
        ),
        # libpq connects to hostaddr and checks the certificate against the host name: a name the
        # certificate lacks, no DNS needed (the server listens on 127.0.0.1 only, so 127.0.0.2 would be refused).
        pytest.param(
            PASSWORD,
            "wrong-host.invalid",
            VERIFIED | {"hostaddr": "127.0.0.1"},
            'does not match host name "wrong-host.invalid"',
            id="wrong-host",
        ),
        pytest.param(
            PASSWORD,
            "localhost",
            {"sslmode": "disable"},
            f'no pg_hba.conf entry for host "127.0.0.1", user "{USER}", database "{DATABASE}", no encryption',
            id="no-tls",
        ),
    ],
)
def test_a_refused_connection_is_one_line_naming_the_cause(tls_server, certificates, password, host, query, cause):
    query = {name: certificates.get(value, value) for name, value in query.items()}  # "ca" -> its file
    url = url_of(tls_server, host=host, password=password, **query)

    started = time.monotonic()
    result = nlpkit("db", "upgrade", "--database-url", url)
    elapsed = time.monotonic() - started

    assert result.returncode == 1, result.stderr
    line = error_line(result)
    assert line.startswith("Error: database error: ") and cause in line, line
    assert PASSWORD not in result.stdout + result.stderr and WRONG_PASSWORD not in result.stdout + result.stderr
    assert elapsed < QUICKLY_S, f"took {elapsed:.1f} s"
