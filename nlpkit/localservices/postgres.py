"""A PostgreSQL server of our own, run from the distribution's binaries with ``pg_ctl``.

Tests and the demo get a real PostgreSQL (same SQL dialect, locking and types as production)
without Docker and without touching a system cluster: the server's files, its unix socket and
its log all live in one data directory, and it listens only on 127.0.0.1.

PostgreSQL refuses to run as root, so when we are root the server runs as the ``postgres``
system account (``runuser``), which must be able to reach the data directory.

Measured on a 2-core Linux VM with PostgreSQL 15.18: first ``start()`` 1.9-2.8 s (initdb is
about 1.2 s of it), later starts 0.15 s, ``stop()`` 0.1-0.3 s, ``create_database`` 0.05-0.08 s.
Idle, its 6 processes hold 60 MiB RSS summed (shared buffers counted in each), 13 MiB unique.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from nlpkit.localservices import (
    ServiceStatus,
    free_ports,
    log_tail,
    port_is_free,
    process_alive,
    read_state,
    service_status,
    start_local_service,
    stop_service,
    wait_for_exit,
    write_state,
)
from nlpkit.localservices.errors import ServiceError
from nlpkit.system.cache import cache_dir

PG_USER = "nlpkit"
PG_PASSWORD = "nlpkit"
PG_DATABASE = "nlpkit"
SERVER_ACCOUNT = "postgres"

_STATE_FILE = "state.json"

_INSTALL_HINT = (
    "PostgreSQL server programs (initdb, pg_ctl) not found; install PostgreSQL 13 or newer "
    "(Debian/Ubuntu: apt-get install postgresql; Fedora: dnf install postgresql-server; "
    "macOS: brew install postgresql) or put its bin directory on PATH"
)
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
# Linux's limit on a unix socket path (sun_path is 108 bytes including the terminating NUL).
_MAX_SOCKET_PATH = 107


def ensure_postgres_installed() -> Path:
    """The bin directory holding initdb and pg_ctl, installing PostgreSQL with apt-get if need be."""
    bindir = _find_bindir()
    if bindir is None:
        _install_with_apt()
        bindir = _find_bindir()
    if bindir is None:
        raise ServiceError(_INSTALL_HINT)
    return bindir


def _find_bindir() -> Path | None:
    """pg_config's bindir first, then the newest Debian-style /usr/lib/postgresql/<major>/bin, then PATH."""
    candidates = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    candidates += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_major_version, reverse=True)
    initdb = shutil.which("initdb")
    if initdb:
        candidates.append(Path(initdb).parent)
    return next((path for path in candidates if (path / "initdb").exists() and (path / "pg_ctl").exists()), None)


def _major_version(bindir: Path) -> int:
    return int(bindir.parent.name) if bindir.parent.name.isdigit() else 0


def _install_with_apt() -> None:
    """apt-get install postgresql; apt-get update only when the install fails without it."""
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise ServiceError(_INSTALL_HINT)
    prefix = _privilege_prefix()
    install = [*prefix, "env", "DEBIAN_FRONTEND=noninteractive", apt_get, "install", "-y", "postgresql"]
    result = subprocess.run(install, capture_output=True, text=True)
    if result.returncode != 0:
        update = subprocess.run([*prefix, apt_get, "update"], capture_output=True, text=True)
        result = subprocess.run(install, capture_output=True, text=True) if update.returncode == 0 else update
    if result.returncode != 0:
        tail = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
        raise ServiceError(f"installing PostgreSQL with apt-get failed: {tail}")


def _privilege_prefix() -> list[str]:
    """Nothing as root; non-interactive sudo otherwise (a password prompt would hang tests)."""
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo"):
        return ["sudo", "-n"]
    raise ServiceError(f"{_INSTALL_HINT} (installing needs root, and sudo is not available)")


def _server_account() -> pwd.struct_passwd | None:
    """The account the server must run as: None means ourselves; the postgres account when root."""
    if os.geteuid() != 0:
        return None
    if shutil.which("runuser") is None:
        raise ServiceError(
            "PostgreSQL refuses to run as root and runuser (util-linux) is missing; run as a normal user"
        )
    try:
        return pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError:
        raise ServiceError(
            f"PostgreSQL refuses to run as root and there is no '{SERVER_ACCOUNT}' user; "
            "install the postgresql package (it creates one) or run as a normal user"
        ) from None


def _unreachable_ancestor(path: Path, account: pwd.struct_passwd) -> Path | None:
    """The first existing directory above ``path`` that ``account`` may not enter (mode bits only)."""
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))
    for directory in reversed(path.parents):
        if not directory.exists():
            break
        info = directory.stat()
        if info.st_uid == account.pw_uid:
            allowed = info.st_mode & stat.S_IXUSR
        elif info.st_gid in groups:
            allowed = info.st_mode & stat.S_IXGRP
        else:
            allowed = info.st_mode & stat.S_IXOTH
        if not allowed:
            return directory
    return None


def _as_account(command: list[str], account: pwd.struct_passwd | None) -> list[str]:
    return ["runuser", "-u", account.pw_name, "--", *command] if account else command


def _give_to(path: Path, account: pwd.struct_passwd | None) -> None:
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)


def _literal(path: Path) -> str:
    """A path as a quoted string in postgresql.conf."""
    return "'" + str(path).replace("'", "''") + "'"


@dataclass(frozen=True)
class ServerTls:
    """The certificate (PEM, its chain after it) and private key the server presents to TLS clients.

    With them, TCP connections must use TLS and a password (``hostssl ... scram-sha-256`` is the
    only TCP line of pg_hba.conf), so a plain connection is refused; the unix socket still trusts.
    """

    certificate: Path
    key: Path


class PostgresServer:
    """One PostgreSQL cluster in ``data_dir``: ``pgdata/`` (the cluster), the socket, the log and our state.

    The superuser is ``nlpkit``/``nlpkit``; TCP connections use scram-sha-256 (and TLS only, given
    ``tls``) and the unix socket (reachable only by the data directory's owner) trusts its callers.
    """

    def __init__(self, data_dir: Path, port: int | None = None, tls: ServerTls | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port or free_ports(1)[0]
        self.tls = tls

    @property
    def url(self) -> str:
        return self.url_for(PG_DATABASE)

    def url_for(self, database: str) -> str:
        return f"postgresql+psycopg://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{self.port}/{database}"

    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def log_file(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def pid(self) -> int | None:
        """The postmaster's pid from its own postmaster.pid file."""
        try:
            return int((self.pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
        except (FileNotFoundError, ValueError):
            return None

    @classmethod
    def attach(cls, data_dir: Path) -> PostgresServer:
        """The server another process started in ``data_dir``, so this one can use or stop it."""
        data_dir = Path(data_dir).resolve()
        state = read_state(data_dir / _STATE_FILE)
        if state is None:
            raise ServiceError(f"no PostgreSQL server state in {data_dir}")
        server = cls(data_dir, state["port"])
        if not server.is_running():
            raise ServiceError(f"the PostgreSQL server recorded in {data_dir} is not running")
        return server

    def is_running(self) -> bool:
        pid = self.pid
        return pid is not None and process_alive(pid, str(self.pgdata))

    def start(self, timeout: float = 60) -> PostgresServer:
        """initdb (first time only), start, and make sure the ``nlpkit`` database exists."""
        if self.is_running():
            return self
        if not port_is_free(self.port):
            raise ServiceError(f"port {self.port} on 127.0.0.1 is taken; stop what uses it or pick another port")
        bindir = ensure_postgres_installed()
        account = _server_account()
        self._prepare_data_dir(account)
        if not (self.pgdata / "PG_VERSION").exists():
            self._initdb(bindir, account)
        self._write_settings(account)
        self._pg_ctl_start(bindir, account, timeout)
        write_state(self.data_dir / _STATE_FILE, {"port": self.port, "url": self.url})
        self._ensure_database(PG_DATABASE)
        return self

    def wait_ready(self, timeout: float = 60) -> None:
        """Block until the server accepts a connection (one another process started may still be
        starting up); the log tail if it exits or does not answer in time."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._admin_connection().close()
                return
            except psycopg.OperationalError as exc:
                if not self.is_running():
                    raise ServiceError(f"PostgreSQL exited; see {self.log_file}", log_tail(self.log_file)) from exc
                if time.monotonic() >= deadline:
                    raise ServiceError(
                        f"PostgreSQL did not accept connections within {timeout:.0f} s; see {self.log_file}",
                        log_tail(self.log_file),
                    ) from exc
                time.sleep(0.25)

    def stop(self, timeout: float = 20) -> None:
        """Fast shutdown (SIGINT: roll back sessions, checkpoint); immediate (SIGQUIT) after ``timeout``."""
        pid = self.pid
        if pid is None or not self.is_running():
            return
        os.kill(pid, signal.SIGINT)
        if not wait_for_exit(pid, str(self.pgdata), timeout):
            os.kill(pid, signal.SIGQUIT)
            wait_for_exit(pid, str(self.pgdata), 10)

    def status(self) -> ServiceStatus:
        running = self.is_running()
        return ServiceStatus(running, self.data_dir, self.url, self.pid if running else None)

    def create_database(self, name: str) -> str:
        """Create an empty database and return its SQLAlchemy URL; an existing name is an error."""
        if not _DATABASE_NAME.fullmatch(name):
            raise ServiceError(f"database name {name!r} must be lowercase letters, digits and _ (63 at most)")
        with self._admin_connection() as connection:
            try:
                connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            except psycopg.errors.DuplicateDatabase:
                raise ServiceError(f"database {name!r} already exists on 127.0.0.1:{self.port}") from None
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        """Drop a database even while clients are still connected to it."""
        with self._admin_connection() as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _prepare_data_dir(self, account: pwd.struct_passwd | None) -> None:
        """Create the directory (and missing parents) owned by the server's account, mode 0700."""
        if len(f"{self.data_dir}/.s.PGSQL.{self.port}") > _MAX_SOCKET_PATH:
            raise ServiceError(f"data directory path too long for a unix socket: {self.data_dir}")
        if account is not None and (blocked := _unreachable_ancestor(self.data_dir, account)):
            raise ServiceError(
                f"PostgreSQL runs as '{account.pw_name}', which cannot enter {blocked}; "
                "use a data directory under /var/tmp or /tmp"
            )
        created = [path for path in (self.data_dir, *self.data_dir.parents) if not path.exists()]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        for path in {*created, self.data_dir}:
            _give_to(path, account)
        self.data_dir.chmod(0o700)

    def _initdb(self, bindir: Path, account: pwd.struct_passwd | None) -> None:
        password_file = self.data_dir / ".initdb-password"
        password_file.write_text(f"{PG_PASSWORD}\n")
        password_file.chmod(0o600)
        _give_to(password_file, account)
        command = [
            str(bindir / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            PG_USER,
            f"--pwfile={password_file}",
            "--auth-host=scram-sha-256",
            "--auth-local=trust",
            "--no-locale",
            "--encoding=UTF8",
            "--no-instructions",
        ]
        try:
            result = subprocess.run(_as_account(command, account), capture_output=True, text=True, cwd=self.data_dir)
        finally:
            password_file.unlink()
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
            raise ServiceError(f"initdb failed for {self.pgdata}", tail)
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude 'nlpkit.conf'\n")

    def _write_settings(self, account: pwd.struct_passwd | None) -> None:
        """Rewritten at each start so the port (and TLS) can change; light settings for small machines."""
        text = (
            "# Written by nlpkit.localservices.postgres at each start.\n"
            "listen_addresses = '127.0.0.1'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = {_literal(self.data_dir)}\n"
            "max_connections = 100\n"
            "shared_buffers = 32MB\n"
        )
        if self.tls is not None:
            text += self._tls_settings(self.tls, account)
        settings = self.pgdata / "nlpkit.conf"
        settings.write_text(text)
        _give_to(settings, account)

    def _tls_settings(self, tls: ServerTls, account: pwd.struct_passwd | None) -> str:
        """Copies of the certificate and key that the server's account owns (the key mode 0600, or
        PostgreSQL refuses it), and a pg_hba.conf of ours whose only TCP line is hostssl."""
        certificate, key, hba = (self.pgdata / name for name in ("server.crt", "server.key", "nlpkit_hba.conf"))
        shutil.copyfile(tls.certificate, certificate)
        shutil.copyfile(tls.key, key)
        key.chmod(0o600)
        hba.write_text("local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
        for path in (certificate, key, hba):
            _give_to(path, account)
        return (
            "ssl = on\n"
            f"ssl_cert_file = {_literal(certificate)}\n"
            f"ssl_key_file = {_literal(key)}\n"
            f"hba_file = {_literal(hba)}\n"
        )

    def _pg_ctl_start(self, bindir: Path, account: pwd.struct_passwd | None, timeout: float) -> None:
        command = [
            str(bindir / "pg_ctl"),
            "start",
            "-D",
            str(self.pgdata),
            "-l",
            str(self.log_file),
            "-w",
            "-t",
            str(max(1, int(timeout))),
        ]
        result = subprocess.run(
            _as_account(command, account),
            capture_output=True,
            text=True,
            cwd=self.data_dir,
            start_new_session=True,
        )
        if result.returncode != 0:
            raise ServiceError(f"PostgreSQL did not start; see {self.log_file}", log_tail(self.log_file))

    def _admin_connection(self) -> psycopg.Connection:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            user=PG_USER,
            password=PG_PASSWORD,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        )

    def _ensure_database(self, name: str) -> None:
        with self._admin_connection() as connection:
            exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if not exists:
            self.create_database(name)


def _default_data_dir() -> Path:
    """The cache dir, unless we are root and the postgres account could not reach it (e.g. /root)."""
    preferred = cache_dir() / "postgres-run"
    account = _server_account()
    if account is None or _unreachable_ancestor(preferred, account) is None:
        return preferred
    return Path("/var/tmp/nlpkit/postgres-run")


def start_local_postgres(data_dir: Path | None = None, port: int = 5433, timeout: float = 60) -> PostgresServer:
    """The developer's server: persistent data dir, fixed port; reuses one already running there."""
    return start_local_service(PostgresServer, Path(data_dir or _default_data_dir()), port, timeout)


def stop_local_postgres(data_dir: Path | None = None) -> int | None:
    """Stop the developer's server; the pid it had, or None when none was running."""
    return stop_service(PostgresServer, Path(data_dir or _default_data_dir()))


def local_postgres_status(data_dir: Path | None = None) -> ServiceStatus:
    return service_status(PostgresServer, Path(data_dir or _default_data_dir()))
