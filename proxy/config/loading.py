"""Loading the configuration: YAML, `${ENV}` substitution in values, validation with errors a
person can act on, paths relative to the config file, and the JSON schema. Stateless.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from proxy.config.schema import ProxyConfig

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(Exception):
    """A config file that cannot be used; the message points at the bad field."""


def substitute_env(text: str, env: dict[str, str] | None = None) -> str:
    """Replace `${VAR}` / `${VAR:-default}`; an unset variable without default is an error."""
    values = os.environ if env is None else env

    def sub(match: re.Match[str]) -> str:
        name, default = match.group(1), match.group(2)
        if name in values:
            return values[name]
        if default is not None:
            return default
        raise ConfigError(f"environment variable {name!r} is not set (used as ${{{name}}})")

    return _ENV.sub(sub, text)


def _describe(exc: ValidationError) -> str:
    errors = exc.errors()
    deeper = {err["loc"][:-1] for err in errors if len(err["loc"]) > 1}
    lines = []
    for err in errors:
        if err["type"] == "too_short" and any(d[: len(err["loc"])] == err["loc"] for d in deeper):
            continue  # "models: at least 1 item" only repeats that an item was invalid
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"  {where}: {err['msg']}")
    return f"{len(lines)} problem(s) in the config:\n" + "\n".join(lines)


def _substitute_values(data: Any, env: dict[str, str] | None) -> Any:
    """`${VAR}` in string values only: comments and keys are left alone, and a variable's value
    can never change the YAML structure."""
    if isinstance(data, str):
        return substitute_env(data, env)
    if isinstance(data, list):
        return [_substitute_values(v, env) for v in data]
    if isinstance(data, dict):
        return {k: _substitute_values(v, env) for k, v in data.items()}
    return data


def parse_config(
    text: str, *, source: str = "<config>", env: dict[str, str] | None = None
) -> ProxyConfig:
    try:
        data: Any = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping at the top level")
    try:
        data = _substitute_values(data, env)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    try:
        return ProxyConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {_describe(exc)}") from exc


def load_config(path: Path) -> ProxyConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc
    config = parse_config(text, source=str(path))
    home = path.resolve().parent  # supervised backends run there unless they say otherwise
    models = tuple(
        m.model_copy(
            update={
                "cwd": home / m.cwd if m.cwd is not None else home,
                # relative to the config file too, fixed now: not to whatever directory the
                # proxy runs in when the backend is restarted (a redeploy may have removed it)
                "log_file": home / m.log_file if m.log_file is not None else None,
            }
        )
        if m.supervised
        else m
        for m in config.models
    )
    runtime = config.runtime_dir
    return config.model_copy(
        update={"models": models, "runtime_dir": home / runtime if runtime is not None else None}
    )


def json_schema() -> str:
    return json.dumps(ProxyConfig.model_json_schema(), indent=2, sort_keys=True) + "\n"
