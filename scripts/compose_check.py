"""`make compose-check`: build the image and run docker/compose.yaml for real, three workers.

1. Docker: scripts/docker-engine.sh installs the engine and Compose v2 where they are missing and
   starts dockerd where nothing runs one (stopped again at the end if this script started it).
2. Images: the ones compose.yaml and the Dockerfile name are pulled; where a pull fails (no image
   registry reachable), a stand-in from docker/standins/ is built under the same name.
3. The nlpkit image is built (layers cached by dockerd, so a rerun only rebuilds what changed); a
   small sentiment model is registered here and exported (`nlpkit models export`), and the deployment
   started under its own project name: its `models` service imports the archive, three workers load
   it by name.
4. 1,000 IMDb reviews are sent from this machine; the check waits until `nlpkit status` inside the
   deployment shows one stored row per message and lag 0, and one result per row on the output topic.
5. One worker is stopped: it must exit by itself within its grace period (having left the group),
   the other two must own every partition, and 100 more reviews must all be stored.
6. Everything is torn down (`down -v`), and one summary line is printed last.

Run from the repository root after `make setup`; the exit code is 0 only if every check passed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from confluent_kafka.admin import AdminClient

from nlpkit.localservices.kafka import KAFKA_VERSION, ensure_kafka_jars
from nlpkit.models.files import weights_digest
from nlpkit.store import migrated_database
from nlpkit.stream.kafka_clients import read_topic
from nlpkit.testing import save_tiny_distilbert

REPO = Path(__file__).resolve().parent.parent
NLPKIT = REPO / ".venv" / "bin" / "nlpkit"
DATA = Path(os.environ.get("NLPKIT_DATA", REPO.parent / "shared" / "data"))
COMPOSE_FILE = REPO / "docker" / "compose.yaml"
STANDINS = REPO / "docker" / "standins"
PROJECT = "nlpkit-check"  # its own containers, network and volumes: a user's `nlpkit` deployment is left alone
HOST_BOOTSTRAP = "localhost:9094"  # the broker's HOST listener, published on 127.0.0.1
OUTPUT_TOPIC = "review-sentiments"
WORKERS = 3
REVIEWS = 1000
MORE_REVIEWS = 100
SEED = 2027  # not the demo's sample seed: nothing depends on which reviews these are
STANDIN_LABEL = "org.nlpkit.standin"

# What each stand-in's root filesystem holds (Debian 12 packages), by the image name it stands in for.
STANDIN_PACKAGES = {
    "python": ["python3", "python3-pip", "python3-venv", "ca-certificates"],
    "postgres": ["postgresql-15", "util-linux"],
    "kafka": ["openjdk-17-jre-headless", "passwd"],
}


def say(message: str) -> None:
    print(f"compose-check: {message}", flush=True)


def run(*command: str, check: bool = True, capture: bool = False, **kwargs: Any) -> subprocess.CompletedProcess:
    result = subprocess.run(command, text=True, capture_output=capture, **kwargs)
    if check and result.returncode != 0:
        detail = (result.stderr or result.stdout or "").strip().splitlines()[-5:] if capture else []
        raise CheckFailed(
            f"`{' '.join(command[:4])} ...` exited {result.returncode}" + "".join(f"\n  {line}" for line in detail)
        )
    return result


class CheckFailed(Exception):
    """A step of the check did not do what the deployment promises."""


def wait_for(what: str, condition: Callable[[], Any], timeout: float, every: float = 3) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise CheckFailed(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(every)


# --- images ------------------------------------------------------------------------------------


def base_images() -> dict[str, str]:
    """The images the deployment runs on, by stand-in name: Kafka, PostgreSQL and the Python base."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    dockerfile = (REPO / "docker" / "Dockerfile").read_text()
    python = next(line.split("=", 1)[1] for line in dockerfile.splitlines() if line.startswith("ARG PYTHON_IMAGE="))
    return {"python": python, "postgres": services["postgres"]["image"], "kafka": services["kafka"]["image"]}


def ensure_image(kind: str, name: str) -> str:
    """Pull ``name``; where that fails, build the stand-in under that name. Says which it is."""
    if run("docker", "pull", "--quiet", name, check=False, capture=True).returncode == 0:
        return "pulled"
    labels = run("docker", "image", "inspect", "--format", "{{json .Config.Labels}}", name, check=False, capture=True)
    if labels.returncode == 0 and STANDIN_LABEL in (json.loads(labels.stdout) or {}):
        return "stand-in (cached)"
    if labels.returncode == 0:
        return "present"
    build_standin(kind, name)
    return "stand-in (built)"


def build_standin(kind: str, name: str) -> None:
    say(f"{name} cannot be pulled; building a stand-in from Debian packages (docker/standins/{kind})")
    base = f"nlpkit-standin-base/{kind}:bookworm"
    if run("docker", "image", "inspect", base, check=False, capture=True).returncode != 0:
        import_root_filesystem(base, STANDIN_PACKAGES[kind])
    with tempfile.TemporaryDirectory() as context_dir:
        context = Path(context_dir)
        shutil.copytree(STANDINS / kind, context, dirs_exist_ok=True)
        if kind == "python":
            write_pip_settings(context / "pip")
        if kind == "kafka":
            copy_kafka_jars(context / "libs")
        run(
            "docker", "build", "--quiet", "--build-arg", f"BASE={base}", "--label", f"{STANDIN_LABEL}={kind}",
            "--tag", name, str(context), capture=True, env={**os.environ, "DOCKER_BUILDKIT": "0"},
        )  # fmt: skip


def import_root_filesystem(tag: str, packages: list[str]) -> None:
    """A minimal Debian 12 root filesystem from this machine's own apt sources, imported as ``tag``."""
    if shutil.which("mmdebstrap") is None:
        apt = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run("apt-get", "update", "-qq", capture=True, env=apt)
        run("apt-get", "install", "-y", "-qq", "mmdebstrap", capture=True, env=apt)
    sources = next(
        (
            path
            for path in (Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list"))
            if path.is_file()
        ),
        None,
    )
    if sources is None:
        raise CheckFailed("no Debian apt sources on this machine to build stand-in images from")
    with tempfile.TemporaryDirectory() as work:
        rootfs = Path(work) / "rootfs.tar"
        run(
            "mmdebstrap", "--quiet", "--variant=minbase", f"--include={','.join(packages)}",
            "bookworm", str(rootfs), str(sources), capture=True,
        )  # fmt: skip
        run("docker", "import", str(rootfs), tag, capture=True)


def write_pip_settings(root: Path) -> None:
    """This machine's pip settings as /etc/pip.conf (and the CA files they name), for builds inside the stand-in.

    A container reaches the package registry the way this machine does only with its settings; they
    are read here, at build time, and never committed.
    """
    settings: dict[str, str] = {}
    listed = run(sys.executable, "-m", "pip", "config", "list", capture=True, check=False).stdout
    for line in listed.splitlines():
        key, _, value = line.partition("=")
        settings[key.split(".", 1)[-1]] = value.strip().strip("'\"")
    for variable, value in os.environ.items():
        if variable.startswith("PIP_"):
            settings[variable[4:].lower().replace("_", "-")] = value
    wanted = (
        "index-url",
        "extra-index-url",
        "trusted-host",
        "cert",
        "client-cert",
        "default-timeout",
        "timeout",
        "retries",
    )
    lines = ["[global]"]
    for key in wanted:
        value = settings.get(key)
        if not value:
            continue
        if key in ("cert", "client-cert"):
            copied = Path("/etc/nlpkit-pip") / Path(value).name
            (root / copied.relative_to("/")).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(value, root / copied.relative_to("/"))
            value = str(copied)
        lines.append(f"{key} = {value}")
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "pip.conf").write_text("\n".join(lines) + "\n")


def copy_kafka_jars(target: Path) -> None:
    """The broker's jars nlpkit already runs locally, plus kafka-tools for the healthcheck's command."""
    shutil.copytree(ensure_kafka_jars(), target)
    run(
        "mvn", "--batch-mode", "--quiet", "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy",
        f"-Dartifact=org.apache.kafka:kafka-tools:{KAFKA_VERSION}", f"-DoutputDirectory={target}", capture=True,
    )  # fmt: skip


def build_nlpkit_image() -> float:
    """docker/Dockerfile built as `nlpkit:latest`, its steps shown as they start; seconds taken."""
    started = time.monotonic()
    say("building the nlpkit image (docker/Dockerfile; cached layers are reused)")
    command = ["docker", "build", "--file", str(REPO / "docker" / "Dockerfile"), "--tag", "nlpkit:latest", str(REPO)]
    output: list[str] = []
    with subprocess.Popen(
        command, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "DOCKER_BUILDKIT": "0"}
    ) as build:
        for line in build.stdout:
            output.append(line.rstrip())
            if line.startswith("Step "):
                say(f"  {line.strip()[:110]}")
    if build.returncode != 0:
        raise CheckFailed("the image did not build:" + "".join(f"\n  {line}" for line in output[-15:]))
    return time.monotonic() - started


# --- the deployment ---------------------------------------------------------------------------


def compose(*arguments: str, **kwargs: Any) -> subprocess.CompletedProcess:
    return run("docker", "compose", "--file", str(COMPOSE_FILE), "--project-name", PROJECT, *arguments, **kwargs)


def write_model_archive(models_dir: Path) -> None:
    """``sentiment.tar.gz`` in ``models_dir``, as a user makes it: a model registered here, then
    `nlpkit models export`. A small random one: this check is about the deployment, not the predictions."""
    work = models_dir / "host"
    model = save_tiny_distilbert(work / "sentiment", labels=["negative", "positive"])
    url = f"sqlite:///{work / 'nlpkit.db'}"
    migrated_database(url).models.register(
        name="sentiment", task="sentiment", path=model, revision=weights_digest(model)
    )
    run(
        str(NLPKIT),
        "--database-url",
        url,
        "models",
        "export",
        "sentiment",
        str(models_dir / "sentiment.tar.gz"),
        capture=True,
    )
    shutil.rmtree(work)
    for path in [models_dir, *models_dir.rglob("*")]:  # the image's user (uid 10001) must read the bind mount
        path.chmod(0o755 if path.is_dir() else 0o644)


@contextmanager
def deployment(models_dir: Path) -> Iterator[None]:
    environment = {**os.environ, "MODELS_DIR": str(models_dir)}
    try:
        compose("up", "--detach", "--wait", "--no-build", "--scale", f"worker={WORKERS}", env=environment, capture=True)
        yield
    except CheckFailed:
        say("the last log lines of each service:")
        compose(
            "logs",
            "--no-color",
            "--tail",
            "12",
            "postgres",
            "migrate",
            "models",
            "topics",
            "worker",
            check=False,
            env=environment,
        )
        raise
    finally:
        compose("down", "--volumes", "--timeout", "60", check=False, capture=True, env=environment)


def status() -> dict[str, Any]:
    """`nlpkit status --json` run inside the deployment, as an operator would."""
    result = compose("run", "--rm", "--no-deps", "--no-TTY", "worker", "status", "--json", capture=True, check=False)
    try:
        return json.loads(result.stdout)
    except json.JSONDecodeError:
        return {}


def stored_and_lag(report: dict[str, Any]) -> tuple[int, int | None]:
    """Predictions stored and the worker group's total lag (None while a partition has no commit)."""
    stored = report.get("database", {}).get("tasks", {}).get("sentiment", {}).get("predictions", 0)
    partitions = [row for row in report.get("kafka", {}).get("partitions", []) if row["group"] == "nlpkit-sentiment"]
    lags = [row["lag"] for row in partitions if row["topic"] == "reviews"]
    return stored, (sum(lags) if lags and None not in lags else None)


def wait_until_stored(expected: int, timeout: float) -> None:
    def done() -> bool:
        stored, lag = stored_and_lag(status())
        say(f"  {stored} of {expected} stored, lag {lag}")
        return stored == expected and lag == 0

    wait_for(f"{expected} rows stored and lag 0", done, timeout, every=5)


def send_reviews(count: int, seed: int) -> None:
    run(
        str(NLPKIT), "send", str(DATA / "imdb" / "train.jsonl"), "--topic", "reviews",
        "--bootstrap-servers", HOST_BOOTSTRAP, "--sample", str(count), "--seed", str(seed), capture=True,
    )  # fmt: skip


def topic_partitions() -> int:
    """The partition count the compose file's `topics` service creates."""
    command = yaml.safe_load(COMPOSE_FILE.read_text())["services"]["topics"]["command"]
    return int(command[command.index("--partitions") + 1])


def check_results(expected: int) -> None:
    """One result message per stored row on the workers' output topic."""
    produced = len(read_topic(HOST_BOOTSTRAP, OUTPUT_TOPIC, limit=expected + 1))
    if produced != expected:
        raise CheckFailed(f"{produced} results on {OUTPUT_TOPIC}, expected {expected}")


def group_owners() -> dict[str, set[int]]:
    """The worker group's members and the partitions of `reviews` each owns."""
    admin = AdminClient({"bootstrap.servers": HOST_BOOTSTRAP})
    description = admin.describe_consumer_groups(["nlpkit-sentiment"])["nlpkit-sentiment"].result(timeout=10)
    return {
        member.client_id + "/" + member.member_id[-6:]: {
            tp.partition for tp in member.assignment.topic_partitions if tp.topic == "reviews"
        }
        for member in description.members
    }


def stop_one_worker(grace: float) -> tuple[float, int]:
    """Stop the last worker replica the way `docker stop` does; its exit code and how long it took."""
    container = compose("ps", "--quiet", "worker", capture=True).stdout.split()[-1]
    started = time.monotonic()
    run("docker", "stop", "--time", str(int(grace)), container, capture=True)
    took = time.monotonic() - started
    exit_code = int(run("docker", "inspect", "--format", "{{.State.ExitCode}}", container, capture=True).stdout)
    return took, exit_code


def main() -> int:
    started = time.monotonic()
    engine = ""
    summary = "compose-check FAILED"
    try:
        engine = run(str(REPO / "scripts" / "docker-engine.sh"), "start", capture=True, stderr=None).stdout.strip()
        images = {name: ensure_image(kind, name) for kind, name in base_images().items()}
        say("images: " + ", ".join(f"{name} {how}" for name, how in images.items()))
        build_seconds = build_nlpkit_image()
        grace = float(yaml.safe_load(COMPOSE_FILE.read_text())["services"]["worker"]["stop_grace_period"].rstrip("s"))
        with tempfile.TemporaryDirectory() as models:
            write_model_archive(Path(models))
            with deployment(Path(models)):
                say(f"up: {WORKERS} workers healthy; sending {REVIEWS} reviews")
                send_reviews(REVIEWS, SEED)
                wait_until_stored(REVIEWS, timeout=300)
                check_results(REVIEWS)
                owners = group_owners()
                if len(owners) != WORKERS:
                    raise CheckFailed(f"{len(owners)} members in the worker group, expected {WORKERS}")
                took, exit_code = stop_one_worker(grace)
                say(f"stopped one worker in {took:.1f} s (grace period {grace:.0f} s), exit code {exit_code}")
                if exit_code != 0 or took >= grace:
                    raise CheckFailed(
                        f"the stopped worker did not leave by itself within {grace:.0f} s (exit {exit_code})"
                    )
                owners = wait_for(
                    "the two remaining workers own every partition",
                    lambda: (
                        (found := group_owners())
                        and len(found) == WORKERS - 1
                        and set().union(*found.values()) == set(range(topic_partitions()))
                        and found
                    ),
                    timeout=60,
                )
                send_reviews(MORE_REVIEWS, SEED + 1)
                wait_until_stored(REVIEWS + MORE_REVIEWS, timeout=180)
                check_results(REVIEWS + MORE_REVIEWS)
        total = REVIEWS + MORE_REVIEWS
        summary = (
            f"compose-check passed: {WORKERS} workers, {REVIEWS}+{MORE_REVIEWS} reviews -> {total} rows "
            f"and {total} results on {OUTPUT_TOPIC}, lag 0; "
            f"a stopped worker left in {took:.0f} s and {len(owners)} took its partitions; "
            f"image build {build_seconds:.0f} s, total {time.monotonic() - started:.0f} s (docker {engine})"
        )
        return 0
    except CheckFailed as failure:
        summary = f"compose-check FAILED: {failure}"
        return 1
    finally:
        if engine == "started":
            run(str(REPO / "scripts" / "docker-engine.sh"), "stop", check=False)
        print(summary, flush=True)


if __name__ == "__main__":
    sys.exit(main())
