"""The Docker deployment (docker/Dockerfile, docker/compose.yaml), checked without Docker.

The development machines have no Docker engine, so nothing here builds an image or starts a
container. What can go wrong in a compose file without anyone noticing until `docker compose up`
is checked instead: the file against the Compose Specification (the JSON schema vendored inside
check-jsonschema, so it works offline), and every value nlpkit will read against nlpkit itself:
variable names against its settings, commands against its real CLI, addresses against the
services and listeners that must answer them, the health port against the image's HEALTHCHECK.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from collections.abc import Callable, Iterator
from importlib.resources import files
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest
import yaml
from sqlalchemy.engine import make_url

from nlpkit import settings
from nlpkit.cli import build_cli
from nlpkit.localservices.kafka import KAFKA_VERSION
from nlpkit.plugins import LOAD_PLUGINS_ENV

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
DOCKERIGNORE = ROOT / ".dockerignore"

# A proxy nothing listens on: any attempt by the validator to fetch something fails loudly.
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}


# --- reading the files ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        keyword, _, arguments = (pending + line).strip().partition(" ")
        instructions.append((keyword.upper(), arguments.strip()))
        pending = ""
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, each list starting with its FROM."""
    result: list[list[tuple[str, str]]] = []
    for instruction in dockerfile_instructions():
        if instruction[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instruction)
    return result


def base_image(stage: list[tuple[str, str]]) -> str:
    """The stage's FROM image, with global ARG defaults substituted."""
    defaults = {}
    for keyword, arguments in dockerfile_instructions():
        if keyword == "FROM":
            break
        if keyword == "ARG" and "=" in arguments:
            name, _, value = arguments.partition("=")
            defaults[name] = value.strip('"')
    image = stage[0][1].split()[0]
    return re.sub(r"\$\{(\w+)\}", lambda match: defaults[match.group(1)], image)


def image_env() -> dict[str, str]:
    """ENV of the final stage (``ENV A=1 B=2`` form)."""
    values: dict[str, str] = {}
    for keyword, arguments in stages()[-1]:
        if keyword == "ENV":
            values.update(item.split("=", 1) for item in shlex.split(arguments))
    return values


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) if "=" in item else (item, "") for item in raw)
    return {str(name): str(value) for name, value in raw.items()}


def command(service: dict[str, Any]) -> list[str]:
    """The service's command as compose runs it when no variable is set (``${NAME:-default}`` -> default)."""
    raw = service["command"]
    items = shlex.split(raw) if isinstance(raw, str) else [str(item) for item in raw]
    return [re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", item) for item in items]


def nlpkit_services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Services that run the nlpkit image built from docker/Dockerfile."""
    return {
        name: service
        for name, service in compose["services"].items()
        if isinstance(service.get("build"), dict) and service["build"].get("dockerfile") == "docker/Dockerfile"
    }


def parse_cli(args: list[str]) -> tuple[str, click.Context]:
    """Parse ``nlpkit ARGS`` with the real CLI, without running anything: (command path, context)."""
    group: click.Command = build_cli()
    context = click.Context(group, info_name="nlpkit")
    path: list[str] = []
    while isinstance(group, click.Group):
        assert args, f"'nlpkit {' '.join(path)}' needs a subcommand"
        name, args = args[0], args[1:]
        found = group.get_command(context, name)
        assert found is not None, f"nlpkit has no command '{' '.join([*path, name])}'"
        path.append(name)
        group = found
        if isinstance(group, click.Group):
            context = click.Context(group, info_name=name, parent=context)
    return " ".join(path), group.make_context(path[-1], list(args), parent=context)


def worker_params(compose: dict[str, Any]) -> dict[str, Any]:
    path, context = parse_cli(command(compose["services"]["worker"]))
    assert path == "consume"
    return context.params


def healthcheck_port() -> int:
    checks = [arguments for keyword, arguments in stages()[-1] if keyword == "HEALTHCHECK"]
    assert len(checks) == 1, "the image needs exactly one HEALTHCHECK"
    match = re.search(r"http://127\.0\.0\.1:(\d+)/healthz", checks[0])
    assert match, f"the HEALTHCHECK does not request /healthz: {checks[0]}"
    return int(match.group(1))


def listeners(value: str) -> dict[str, tuple[str, int]]:
    """``NAME://host:port,...`` as {NAME: (host, port)}."""
    result = {}
    for item in value.split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        result[name] = (host, int(port))
    return result


# --- the Compose Specification --------------------------------------------------------------------


def validate(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)],
        capture_output=True,
        text=True,
        env=os.environ | OFFLINE,
        timeout=120,
    )


def test_the_compose_schema_ships_with_check_jsonschema_and_refers_to_nothing_outside() -> None:
    schema_file = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    assert schema_file.is_file()
    schema = json.loads(schema_file.read_text())
    assert schema["title"] == "Compose Specification"

    def refs(node: Any) -> Iterator[str]:
        if isinstance(node, dict):
            yield from (value for key, value in node.items() if key == "$ref" and isinstance(value, str))
            for value in node.values():
                yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)

    found = list(refs(schema))
    assert found and all(ref.startswith("#") for ref in found), [ref for ref in found if not ref.startswith("#")]


def test_compose_file_follows_the_compose_specification() -> None:
    result = validate(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "validation done" in result.stdout


def _ports_not_a_list(compose: dict[str, Any]) -> None:
    compose["services"]["worker"]["ports"] = "not-a-list"


def _unknown_top_level_key(compose: dict[str, Any]) -> None:
    compose["servics"] = compose.pop("services")


def _unknown_dependency_condition(compose: dict[str, Any]) -> None:
    compose["services"]["worker"]["depends_on"]["migrate"]["condition"] = "service_finished"


@pytest.mark.parametrize("breakage", [_ports_not_a_list, _unknown_top_level_key, _unknown_dependency_condition])
def test_a_broken_compose_file_fails_validation(
    compose: dict[str, Any], tmp_path: Path, breakage: Callable[[dict[str, Any]], None]
) -> None:
    broken = copy.deepcopy(compose)
    breakage(broken)
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken, sort_keys=False))
    result = validate(path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Schema validation errors" in result.stdout


# --- the compose file against what nlpkit reads --------------------------------------------------

READ_BY_NLPKIT = {setting.env for setting in settings.SETTINGS.values()} | {settings.CONFIG_ENV, LOAD_PLUGINS_ENV}


def unknown_nlpkit_variables(names: set[str]) -> set[str]:
    return {
        name
        for name in names
        if name.startswith("NLPKIT_")
        and name not in READ_BY_NLPKIT
        and not name.startswith((settings.KAFKA_ENV_PREFIX, settings.SCHEMA_REGISTRY_ENV_PREFIX))
    }


def test_the_variable_check_catches_a_misspelt_setting() -> None:
    assert unknown_nlpkit_variables({"NLPKIT_DB_URL", "NLPKIT_DATABASE_URL", "NLPKIT_KAFKA_CLIENT_ID"}) == {
        "NLPKIT_DB_URL"
    }


def test_every_nlpkit_variable_set_is_one_nlpkit_reads(compose: dict[str, Any]) -> None:
    names = set(image_env())
    for service in compose["services"].values():
        names |= set(environment(service))
    assert {"NLPKIT_DATABASE_URL", "NLPKIT_BOOTSTRAP_SERVERS", "NLPKIT_METRICS_HOST", "NLPKIT_HOME"} <= names
    assert unknown_nlpkit_variables(names) == set()


def test_every_nlpkit_service_runs_a_command_the_cli_accepts(compose: dict[str, Any]) -> None:
    paths = {name: parse_cli(command(service))[0] for name, service in nlpkit_services(compose).items()}
    assert paths == {"migrate": "db upgrade", "models": "models import", "topics": "topics create", "worker": "consume"}


def test_the_worker_serves_health_where_the_image_checks_it(compose: dict[str, Any]) -> None:
    port = healthcheck_port()
    assert worker_params(compose)["metrics_port"] == port
    exposed = {
        item.split("/")[0] for keyword, arguments in stages()[-1] if keyword == "EXPOSE" for item in arguments.split()
    }
    assert str(port) in exposed
    assert [str(item) for item in compose["services"]["worker"]["expose"]] == [str(port)]
    # Bound to 127.0.0.1 (nlpkit's default) the server would answer the HEALTHCHECK but no scraper.
    host = environment(compose["services"]["worker"]).get("NLPKIT_METRICS_HOST", image_env().get("NLPKIT_METRICS_HOST"))
    assert host == "0.0.0.0"


def test_workers_share_one_group_on_the_topic_that_is_created(compose: dict[str, Any]) -> None:
    worker = worker_params(compose)
    _, created = parse_cli(command(compose["services"]["topics"]))
    assert worker["group"] == "nlpkit-sentiment"
    assert worker["tasks"] == ("sentiment",)
    assert worker["topics"] == created.params["names"][:1]
    assert worker["output_topic"] in created.params["names"]
    # Kafka gives each partition to one member of the group: fewer partitions than workers leaves some idle.
    assert created.params["partitions"] >= compose["services"]["worker"]["deploy"]["replicas"]


def test_workers_load_by_name_the_model_the_models_service_imports(compose: dict[str, Any]) -> None:
    services = compose["services"]
    (model,) = worker_params(compose)["models"]
    path, imported = parse_cli(command(services["models"]))
    assert imported.params["name"] == model and "/" not in model
    # The archive comes from the bind mount; the files go to the models volume, the models directory.
    (archive_mount,) = [mount for mount in services["models"]["volumes"] if isinstance(mount, dict)]
    assert archive_mount["read_only"] and PurePosixPath(str(imported.params["file"])).is_relative_to(
        archive_mount["target"]
    )
    models_dir = image_env()["NLPKIT_MODELS_DIR"]
    assert f"models:{models_dir}" in services["models"]["volumes"]
    (worker_mount,) = services["worker"]["volumes"]
    assert (worker_mount["source"], worker_mount["target"], worker_mount["read_only"]) == ("models", models_dir, True)
    assert "models" in compose["volumes"]


def test_bootstrap_servers_name_a_listener_kafka_advertises(compose: dict[str, Any]) -> None:
    kafka = environment(compose["services"]["kafka"])
    advertised = listeners(kafka["KAFKA_ADVERTISED_LISTENERS"])
    bound = listeners(kafka["KAFKA_LISTENERS"])
    protocols = dict(item.split(":") for item in kafka["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    for name, service in nlpkit_services(compose).items():
        for server in environment(service)["NLPKIT_BOOTSTRAP_SERVERS"].split(","):
            host, _, port = server.rpartition(":")
            assert host in compose["services"], f"{name}: {host} is not a service"
            matching = [listener for listener, address in advertised.items() if address == (host, int(port))]
            assert matching, f"{name}: kafka advertises no listener at {server}: {advertised}"
            assert bound[matching[0]][1] == int(port) and matching[0] in protocols
    assert set(advertised) <= set(bound) <= set(protocols)

    (controller,) = kafka["KAFKA_CONTROLLER_LISTENER_NAMES"].split(",")
    node, _, address = kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"].partition("@")
    host, _, port = address.partition(":")
    assert (node, host, int(port)) == (str(kafka["KAFKA_NODE_ID"]), "kafka", bound[controller][1])
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert compose["services"]["kafka"]["image"] == f"apache/kafka:{KAFKA_VERSION}"


def test_the_database_url_names_the_postgres_service_and_its_account(compose: dict[str, Any]) -> None:
    postgres = environment(compose["services"]["postgres"])
    for name, service in nlpkit_services(compose).items():
        env = environment(service)
        url = make_url(env["NLPKIT_DATABASE_URL"])
        assert url.get_backend_name() == "postgresql"
        assert url.host in compose["services"] and compose["services"][url.host]["image"].startswith("postgres:")
        assert (url.username, url.database) == (postgres["POSTGRES_USER"], postgres["POSTGRES_DB"]), name
        assert url.port in (None, 5432)
        # The password reaches libpq as PGPASSWORD, from the same variable the server is set up with.
        assert url.password is None and env["PGPASSWORD"] == postgres["POSTGRES_PASSWORD"], name


def test_services_start_in_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert services["models"]["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    worker = services["worker"]["depends_on"]
    assert worker["migrate"]["condition"] == "service_completed_successfully"
    assert worker["models"]["condition"] == "service_completed_successfully"
    assert worker["topics"]["condition"] == "service_completed_successfully"
    assert worker["kafka"]["condition"] == "service_healthy"
    for one_shot in ("migrate", "topics"):
        assert services[one_shot]["restart"] == "no"
        assert services[one_shot]["healthcheck"] == {"disable": True}
    for dependency in ("kafka", "postgres"):
        assert services[dependency]["healthcheck"]["test"]


def test_the_worker_can_scale(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    # A published host port or a fixed container name allows only one container.
    assert "ports" not in worker and "container_name" not in worker
    assert worker["deploy"]["replicas"] >= 2


# --- the Dockerfile -------------------------------------------------------------------------------------


def test_the_image_is_python_slim_and_runs_nlpkit_unprivileged() -> None:
    final = stages()[-1]
    assert base_image(final) == "python:3.11-slim"
    users = [arguments for keyword, arguments in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    assert [json.loads(arguments) for keyword, arguments in final if keyword == "ENTRYPOINT"] == [["nlpkit"]]


def test_the_image_installs_dependencies_before_copying_the_source() -> None:
    final = stages()[-1]
    index = {position: instruction for position, instruction in enumerate(final)}
    installs = [i for i, (keyword, arguments) in index.items() if keyword == "RUN" and "pip install" in arguments]
    source = [i for i, (keyword, arguments) in index.items() if keyword == "COPY" and arguments.startswith("nlpkit ")]
    assert installs and source
    assert "requirements.txt" in index[installs[0]][1] or "torch.txt" in index[installs[0]][1]
    assert installs[0] < source[0]
    assert all("--no-deps" in index[i][1] for i in installs if i > source[0])


def test_the_requirements_stage_lists_the_dependencies_of_pyproject(tmp_path: Path) -> None:
    (stage,) = [stage for stage in stages() if "AS requirements" in stage[0][1]]
    (script,) = [arguments for keyword, arguments in stage if keyword == "RUN"]
    (tmp_path / "pyproject.toml").write_bytes((ROOT / "pyproject.toml").read_bytes())
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    subprocess.run(["sh", "-c", script], cwd=tmp_path, check=True, env=os.environ | {"PATH": path}, timeout=60)
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert (tmp_path / "requirements.txt").read_text().splitlines() == dependencies
    assert (tmp_path / "torch.txt").read_text().splitlines() == [d for d in dependencies if re.match(r"torch\b", d)]
    assert len((tmp_path / "torch.txt").read_text().splitlines()) == 1


def dockerignored(path: str) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parent directories decides."""
    ignored = False
    for line in DOCKERIGNORE.read_text().splitlines():
        pattern = line.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negated = pattern.startswith("!")
        body = pattern.lstrip("!").strip("/")
        regex = re.escape(body).replace(r"\*\*/", "(.*/)?").replace(r"\*\*", ".*").replace(r"\*", "[^/]*")
        regex = regex.replace(r"\?", "[^/]").replace(r"\[", "[").replace(r"\]", "]")
        parts = PurePosixPath(path).parts
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            ignored = not negated
    return ignored


def test_the_build_context_holds_what_the_image_copies_and_no_more() -> None:
    copied = [
        source
        for keyword, arguments in dockerfile_instructions()
        if keyword == "COPY" and not arguments.startswith("--from")
        for source in arguments.split()[:-1]
    ]
    assert {"pyproject.toml", "setup.py", "nlpkit"} <= set(copied)  # setup.py finds the packages
    for source in copied:
        assert not dockerignored(source), f"the Dockerfile copies {source}, which .dockerignore leaves out"
    for example in ("nlpkit/cli/__init__.py", "plugins/sentiment/__init__.py", "migrations/env.py"):
        assert (ROOT / example).is_file() and not dockerignored(example)
    left_out_examples = (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/integration/test_docker.py",
        "nlpkit/__pycache__/x.pyc",
    )
    for left_out in left_out_examples:
        assert dockerignored(left_out), left_out
