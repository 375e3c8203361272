"""Deployment files: compose validated by a real compose implementation, Dockerfiles linted,
and the configs they ship load - all without a Docker engine."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import load_config, parse_config
from tests.helpers.processes import required_tool

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "deploy" / "docker-compose.yml"


def tool(name: str) -> str:
    return required_tool(name, ".ci/run installs it")


@pytest.mark.process  # runs the tool as a subprocess
def test_compose_file_is_valid_for_docker_compose() -> None:
    done = subprocess.run(
        [tool("docker-compose"), "-f", str(COMPOSE), "config", "-q"],
        cwd=COMPOSE.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.process  # runs the tool as a subprocess
@pytest.mark.parametrize(
    "dockerfile", ["docker/Dockerfile", "docker/Dockerfile.vllm", "docker/Dockerfile.router"]
)
def test_dockerfiles_pass_hadolint(dockerfile: str) -> None:
    done = subprocess.run(
        [tool("hadolint"), str(ROOT / dockerfile)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_publishes_only_the_front_doors() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert services["vllm-switch"]["ports"] == ["8000:8000"]
    devices = services["vllm-switch"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert compose["networks"]["backend"]["internal"] is True
    prometheus = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    assert prometheus["scrape_configs"][0]["static_configs"][0]["targets"] == ["vllm-switch:8000"]


def test_compose_config_supervises_both_models_on_loopback() -> None:
    config = load_config(ROOT / "deploy" / "config.compose.yaml")
    assert [m.name for m in config.models] == ["qwen3-0.6b", "qwen3-1.7b"]
    for m in config.models:
        assert m.supervised
        assert m.command is not None
        assert m.command[:2] == ("vllm", "serve")
        assert "--enable-sleep-mode" in m.command
        port = m.command[m.command.index("--port") + 1]
        assert m.base_url == f"http://127.0.0.1:{port}"
        assert m.command[m.command.index("--host") + 1] == "127.0.0.1"


def valid_manifests(path: Path) -> list[Any]:
    """The documents of `path`, once `kubernetes-validate --strict` passed them (offline)."""
    done = subprocess.run(
        [tool("kubernetes-validate"), "--strict", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return list(yaml.safe_load_all(path.read_text()))


@pytest.mark.process  # runs the tool as a subprocess
def test_kubernetes_manifests_validate_and_embed_a_valid_config() -> None:
    docs = valid_manifests(ROOT / "deploy" / "kubernetes" / "vllm-switch.yaml")
    config_map = next(d for d in docs if d["kind"] == "ConfigMap")
    config = parse_config(config_map["data"]["config.yaml"], source="configmap")
    assert all(m.supervised for m in config.models)
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert deployment["spec"]["strategy"]["type"] == "Recreate", "two pods must never share a GPU"


@pytest.mark.process  # runs the tool as a subprocess
def test_the_router_manifests_validate_and_find_the_proxies_by_their_ready() -> None:
    manifests = ROOT / "deploy" / "kubernetes" / "router.yaml"
    docs = {d["kind"]: d for d in valid_manifests(manifests)}
    args = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--health-check-endpoint=/ready" in args, "/health is 200 before the bootstrap"
    proxies = {
        d["kind"]: d
        for d in yaml.safe_load_all((manifests.parent / "vllm-switch.yaml").read_text())
    }
    label = proxies["Deployment"]["spec"]["template"]["metadata"]["labels"]["app"]
    assert f"--selector=app={label}" in args, "the router finds the vllm-switch pods"
    port = proxies["Service"]["spec"]["ports"][0]["port"]
    assert f"--service-discovery-port={port}" in args
    assert docs["RoleBinding"]["subjects"][0]["name"] == docs["ServiceAccount"]["metadata"]["name"]


def test_the_two_gpu_example_loads_and_keeps_nvlink_multicast_off() -> None:
    config = load_config(ROOT / "deploy" / "config.two-gpus.yaml")
    assert {m.gpu for m in config.models} == {"gpu0", "gpu1"}
    tp = [m for m in config.models if m.command and "--tensor-parallel-size" in m.command]
    assert [m.env["CUDA_VISIBLE_DEVICES"] for m in tp] == ["0,1"]
    assert all(m.env.get("NCCL_NVLS_ENABLE") == "0" for m in tp)
