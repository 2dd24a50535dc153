"""The compose file is valid against the compose specification and wires the parts as documented."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


@pytest.fixture(scope="module")
def compose_schema() -> dict[str, Any]:
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    schema: dict[str, Any] = json.loads(vendor.joinpath("compose-spec.json").read_text())
    return schema


def test_compose_file_validates_against_the_compose_specification(compose, compose_schema):
    jsonschema.validate(compose, compose_schema)


def test_schema_check_rejects_a_misspelt_service_key(compose, compose_schema):
    broken = json.loads(json.dumps(compose))
    broken["services"]["service"]["prots"] = ["8000:8000"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, compose_schema)


def test_service_starts_only_after_the_indexer_job_succeeds(compose):
    depends = compose["services"]["service"]["depends_on"]
    assert depends["indexer"]["condition"] == "service_completed_successfully"
    gpu_depends = compose["services"]["service-gpu"]["depends_on"]
    assert gpu_depends["indexer-gpu"]["condition"] == "service_completed_successfully"


SERVING = ("service", "service-gpu", "service-ray")
PORT = "${HISTOSEARCH_PORT:-8000}"


def test_services_listen_publish_and_are_checked_on_the_configured_port(compose):
    published = {
        "service": "${HISTOSEARCH_PUBLISHED_PORT:-8000}",
        "service-gpu": "${HISTOSEARCH_PUBLISHED_PORT:-8000}",
        # `--profile ray up` starts the plain stack too: the Ray service needs a port of its own.
        "service-ray": "${HISTOSEARCH_RAY_PUBLISHED_PORT:-8001}",
    }
    for name in SERVING:
        service = compose["services"][name]
        assert service["ports"] == [f"{published[name]}:{PORT}"], name
        assert service["environment"]["HISTOSEARCH_PORT"] == PORT, name
        # healthcheck.py asks the container's own $HISTOSEARCH_PORT: no port written here.
        assert service["healthcheck"]["test"] == [
            "CMD", "python", "/app/docker/healthcheck.py", "/ready"
        ], name  # fmt: skip
    ray_serve = compose["services"]["service-ray"]["command"]
    assert ray_serve[ray_serve.index("--port") + 1] == PORT


def test_only_the_serving_containers_are_health_checked(compose):
    checked = {name for name, service in compose["services"].items() if "healthcheck" in service}
    assert checked == set(SERVING)


def test_images_build_through_compose_with_the_documented_arguments(compose):
    for name in ("indexer", "ray-head"):
        build = compose["services"][name]["build"]
        assert build["network"] == "${HISTOSEARCH_BUILD_NETWORK:-default}"
        assert build["args"]["BUILD_CA_CERTIFICATES"].startswith("${HISTOSEARCH_BUILD_CA")
        # Passed only when set, so the Dockerfile's own defaults hold otherwise.
        for argument in ("PYTHON_IMAGE", "NODE_IMAGE", "TORCH_INDEX_URL", "TORCH_BUILD"):
            assert build["args"][argument] is None, (name, argument)
    assert compose["services"]["indexer-gpu"]["build"]["dockerfile"] == "docker/Dockerfile.gpu"


def test_indexer_and_service_share_the_named_data_volume(compose):
    assert "histosearch-data" in compose["volumes"]
    for name in ("indexer", "service"):
        assert "histosearch-data:/data" in compose["services"][name]["volumes"]


def test_api_key_comes_from_an_env_file_that_is_never_committed(compose):
    env_files = compose["services"]["service"]["env_file"]
    paths = {entry["path"]: entry["required"] for entry in env_files}
    assert paths[".env"] is False
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored
    shared_settings = (ROOT / "docker" / "histosearch.env").read_text().splitlines()
    assert not [line for line in shared_settings if line.startswith("HISTOSEARCH_API_KEY=")]


def test_gpu_services_sit_behind_the_gpu_profile_and_reserve_a_gpu(compose):
    for name in ("indexer-gpu", "indexer-slides-gpu", "service-gpu"):
        service = compose["services"][name]
        assert service["profiles"] == ["gpu"]
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["capabilities"] == ["gpu"]
    assert compose["services"]["indexer-gpu"]["build"]["target"] == "gpu"
    assert compose["services"]["indexer-gpu"]["image"] == "${HISTOSEARCH_IMAGE:-histosearch}:gpu"


def test_every_compose_command_is_a_verb_the_entrypoint_knows(compose):
    entrypoint = (ROOT / "docker" / "entrypoint.sh").read_text()
    for service in compose["services"].values():
        if "entrypoint" in service:
            continue  # the Ray nodes: see the test below
        verb = service["command"][0]
        assert f"    {verb})" in entrypoint, f"docker/entrypoint.sh does not handle {verb!r}"


def test_ray_profile_nodes_join_one_head_share_the_data_and_run_histosearch_verbs(compose):
    from indexer.cli import build_parser

    verbs = set(build_parser()._subparsers._group_actions[0].choices)  # type: ignore[union-attr, arg-type]
    ray_services = {
        name: service
        for name, service in compose["services"].items()
        if service.get("profiles") == ["ray"]
    }
    assert set(ray_services) == {"ray-head", "ray-worker", "indexer-ray", "service-ray"}
    assert (ROOT / "docker" / "ray-node.sh").stat().st_mode & 0o111
    for name, service in ray_services.items():
        assert service["entrypoint"] == ["/app/docker/ray-node.sh"]
        assert service["shm_size"] == "2gb"
        assert "histosearch-data:/data" in service["volumes"]
        head = service["environment"].get("RAY_HEAD_ADDRESS")
        assert head == (None if name == "ray-head" else "ray-head:6379")
        if "command" in service:
            assert service["command"][0] in verbs
    assert ray_services["ray-head"]["build"]["args"]["HISTOSEARCH_EXTRAS"] == ",ray"
    indexer = ray_services["indexer-ray"]["command"]
    assert "--shards" in indexer and indexer[indexer.index("--ray") + 1] == "auto"
    serve_depends = ray_services["service-ray"]["depends_on"]
    assert serve_depends["indexer-ray"]["condition"] == "service_completed_successfully"


def test_slides_are_mounted_indexed_after_the_images_and_readable_by_the_service(compose):
    service = compose["services"]["service"]
    assert any(volume.endswith(":/slides:ro") for volume in service["volumes"])
    roots = service["environment"]["HISTOSEARCH_ARCHIVE_ROOTS"].split(",")
    assert "/slides" in roots and service["environment"]["HISTOSEARCH_SLIDES"] == "/slides"
    job = compose["services"]["indexer-slides"]
    assert job["command"] == ["index-slides"]
    assert job["depends_on"]["indexer"]["condition"] == "service_completed_successfully"
    assert service["depends_on"]["indexer-slides"]["condition"] == "service_completed_successfully"
    # The GPU profile runs the same three steps in the same order.
    gpu_job, gpu_service = (compose["services"][n] for n in ("indexer-slides-gpu", "service-gpu"))
    assert gpu_job["command"] == ["index-slides"]
    assert gpu_job["depends_on"]["indexer-gpu"]["condition"] == "service_completed_successfully"
    assert (
        gpu_service["depends_on"]["indexer-slides-gpu"]["condition"]
        == "service_completed_successfully"
    )
    # The default host folder exists in a clone, and its slides never reach the build context.
    assert (ROOT / "slides" / "README.md").is_file()
    assert "slides" in (ROOT / ".dockerignore").read_text().splitlines()
