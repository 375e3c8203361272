"""Config: the shipped example loads, bad configs say exactly what is wrong, the schema is current."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.config import ConfigError, json_schema, load_config, parse_config

ROOT = Path(__file__).resolve().parents[2]
MINIMAL = "models:\n  - name: m\n    url: http://127.0.0.1:8001\n"


def test_example_config_loads() -> None:
    config = load_config(ROOT / "deploy" / "config.example.yaml")
    assert [m.name for m in config.models] == ["qwen3-0.6b", "qwen3-1.7b"]
    assert config.models[0].backend_model == "Qwen/Qwen3-0.6B"
    assert config.models[1].sleep_level == 2
    assert config.gpu("gpu0").max_awake == 1


def schema_keys(schema: dict[str, Any]) -> set[str]:
    """Every key the schema allows, as dotted paths ("models.restart.window_s"); list items
    and optional (anyOf ... null) sub-objects are walked through."""
    defs = schema.get("$defs", {})

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while True:
            if "$ref" in node:
                node = defs[node["$ref"].rsplit("/", 1)[1]]
            elif "anyOf" in node:
                nested = [n for n in node["anyOf"] if "$ref" in n or n.get("type") == "array"]
                if not nested:
                    return node
                node = nested[0]
            elif node.get("type") == "array" and isinstance(node.get("items"), dict):
                node = node["items"]
            else:
                return node

    keys: set[str] = set()

    def walk(node: dict[str, Any], prefix: str) -> None:
        for key, sub in resolve(node).get("properties", {}).items():
            keys.add(prefix + key)
            walk(sub, f"{prefix}{key}.")

    walk(schema, "")
    return keys


def yaml_keys(data: Any, prefix: str = "") -> set[str]:
    """Every key a YAML document sets, as dotted paths, over all items of its lists."""
    if isinstance(data, list):
        return set().union(*(yaml_keys(v, prefix) for v in data))
    if not isinstance(data, dict):
        return set()
    return set().union(*({prefix + k} | yaml_keys(v, f"{prefix}{k}.") for k, v in data.items()))


def test_example_config_has_every_key_of_the_schema() -> None:
    """The example says it shows every key: a key added to the config must be added there."""
    schema = json.loads((ROOT / "deploy" / "config.schema.json").read_text())
    allowed = schema_keys(schema)
    assert {"models.restart.window_s", "gpus.scheduling.policy", "limits.queue_size"} <= allowed
    example = yaml_keys(yaml.safe_load((ROOT / "deploy" / "config.example.yaml").read_text()))
    assert sorted(allowed - example) == [], "keys missing from deploy/config.example.yaml"


def test_schema_file_is_current() -> None:
    assert (ROOT / "deploy" / "config.schema.json").read_text() == json_schema(), (
        "regenerate with: vllm-switch config-schema > deploy/config.schema.json"
    )


def test_minimal_config_gets_defaults() -> None:
    config = parse_config(MINIMAL)
    m = config.models[0]
    assert (m.gpu, m.sleep_level, m.warmup.enabled, m.warmup.max_tokens) == ("default", 1, True, 1)
    assert config.gpu("default").max_awake == 1


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MINIMAL + "    sleep_levle: 2\n", "models.0.sleep_levle: Extra inputs are not permitted"),
        (MINIMAL + "    sleep_level: 3\n", "models.0.sleep_level: Input should be 1 or 2"),
        ("models:\n  - name: m\n    url: nope\n", "models.0.url: Input should be a valid URL"),
        ("models: []\n", "models: Tuple should have at least 1 item"),
        (
            MINIMAL + "  - name: m\n    url: http://x:1\n",
            "model name 'm' is used by both 'm' and 'm'",
        ),
        (
            MINIMAL + "    aliases: [n]\n  - name: n\n    url: http://x:1\n",
            "model name 'n' is used by both 'm' and 'n'",
        ),
        (MINIMAL + "    gpu: h\ngpus:\n  - name: g\n", "undeclared gpu group(s) ['h']"),
        (
            MINIMAL + "gpus:\n  - name: default\n    max_awake: 0\n",
            "gpus.0.max_awake: Input should be greater than or equal to 1",
        ),
        (
            MINIMAL + "limits:\n  queue_size: 0\n",
            "limits.queue_size: Input should be greater than or equal to 1",
        ),
        (
            MINIMAL + "  - name: n\n    url: http://127.0.0.1:8001/v1\n",
            "models 'm' and 'n' both use the backend http://127.0.0.1:8001: one vLLM engine "
            "serves one model here",
        ),
        (
            "models:\n  - name: m\n    url: http://Box:80\n  - name: n\n    url: http://box\n",
            "models 'm' and 'n' both use the backend http://box:80",
        ),
        ("- just a list\n", "expected a mapping at the top level"),
        ("models: [\n", "not valid YAML"),
    ],
    ids=[
        "typo",
        "bad-level",
        "bad-url",
        "no-models",
        "duplicate",
        "alias-clash",
        "unknown-gpu",
        "max-awake-0",
        "queue-0",
        "shared-backend",
        "shared-backend-normalised",
        "not-mapping",
        "bad-yaml",
    ],
)
def test_bad_configs_point_at_the_field(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(text, source="c.yaml")
    assert message in str(info.value)
    assert str(info.value).startswith("c.yaml: ")


@pytest.mark.parametrize(
    "second",
    ["http://127.0.0.1:8002", "https://127.0.0.1:8001", "http://localhost:8001"],
    ids=["other-port", "other-scheme", "other-host-spelling"],
)
def test_backends_differ_by_scheme_host_or_port(second: str) -> None:
    """Only the exact scheme, lower-cased host and port are compared: localhost is not
    resolved to 127.0.0.1 (no lookup while validating)."""
    config = parse_config(MINIMAL + f"  - name: n\n    url: {second}\n")
    assert [m.name for m in config.models] == ["m", "n"]


def test_env_substitution_for_secrets() -> None:
    text = MINIMAL + "    api_key: ${KEY}\n    served_name: ${NAME:-fallback}\n"
    m = parse_config(text, env={"KEY": "sk-1"}).models[0]
    assert (m.api_key, m.served_name) == ("sk-1", "fallback")
    with pytest.raises(ConfigError, match="environment variable 'KEY' is not set"):
        parse_config(text, env={})
    assert parse_config(MINIMAL + "    api_key: ${KEY:-}\n", env={}).models[0].api_key is None


def test_env_substitution_ignores_comments_and_keeps_structure() -> None:
    text = MINIMAL + "    # e.g. ${NOT_SET}\n    api_key: ${KEY}\n"
    m = parse_config(text, env={"KEY": "a: [b, c]"}).models[0]
    assert m.api_key == "a: [b, c]", "a value stays a string, whatever it contains"


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.yaml")
