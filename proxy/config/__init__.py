"""The YAML configuration: its schema (`schema.py`) and its loading (`loading.py`). Stateless."""

from proxy.config.loading import (
    ConfigError,
    json_schema,
    load_config,
    parse_config,
    substitute_env,
)
from proxy.config.schema import (
    NAME,
    AuthConfig,
    GpuConfig,
    LimitsConfig,
    LoggingConfig,
    ModelConfig,
    ProxyConfig,
    RestartConfig,
    SchedulingConfig,
    TimeoutsConfig,
    WarmupConfig,
)

__all__ = [
    "NAME",
    "AuthConfig",
    "ConfigError",
    "GpuConfig",
    "LimitsConfig",
    "LoggingConfig",
    "ModelConfig",
    "ProxyConfig",
    "RestartConfig",
    "SchedulingConfig",
    "TimeoutsConfig",
    "WarmupConfig",
    "json_schema",
    "load_config",
    "parse_config",
    "substitute_env",
]
