# -*- test-case-name: tests.test_config -*-
"""
The netguard configuration: one TOML file plus command-line overrides, validated into one
frozen L{Config} by L{load_config}. L{netguard.config.model} holds the values,
L{netguard.config.schema} the keys and their bounds, L{netguard.config.loader} the reading
and merging, L{netguard.config.text} the C{check-config} texts. Every key and rule is in
C{docs/operating.md}.
"""

from netguard.config.loader import (
    default_listen,
    default_state_dir,
    default_users_file,
    load_config,
)
from netguard.config.model import (
    COMMAND_LINE_SOURCE,
    DEFAULT_MAX_AUTH_ATTEMPTS,
    DEFAULT_PORT,
    DEFAULT_SERVER_NAME,
    DEFAULTS_SOURCE,
    GATEWAY_LIMITS,
    MAX_FILE_BYTES,
    MAX_LISTENERS,
    MAX_NAMES_PER_SERVICE,
    MAX_SERVICES,
    MAX_STRING_LENGTH,
    ORIGIN_COMMAND_LINE,
    ORIGIN_DEFAULT,
    ORIGIN_FILE,
    ROOT_STATE_DIR,
    Config,
    ConfigError,
    LogConfig,
    OpsConfig,
    ServiceConfig,
    TLSListenConfig,
)
from netguard.config.text import describe, describe_defaults
from netguard.endpoints import (
    DEFAULT_LISTEN_BACKLOG,
    resolve_endpoint_ports,
    resolve_port,
    split_description,
    with_default_backlog,
)

__all__ = [
    "COMMAND_LINE_SOURCE",
    "DEFAULTS_SOURCE",
    "DEFAULT_LISTEN_BACKLOG",
    "DEFAULT_MAX_AUTH_ATTEMPTS",
    "DEFAULT_PORT",
    "DEFAULT_SERVER_NAME",
    "GATEWAY_LIMITS",
    "MAX_FILE_BYTES",
    "MAX_LISTENERS",
    "MAX_NAMES_PER_SERVICE",
    "MAX_SERVICES",
    "MAX_STRING_LENGTH",
    "ORIGIN_COMMAND_LINE",
    "ORIGIN_DEFAULT",
    "ORIGIN_FILE",
    "ROOT_STATE_DIR",
    "Config",
    "ConfigError",
    "LogConfig",
    "OpsConfig",
    "ServiceConfig",
    "TLSListenConfig",
    "default_listen",
    "default_state_dir",
    "default_users_file",
    "describe",
    "describe_defaults",
    "load_config",
    "resolve_endpoint_ports",
    "resolve_port",
    "split_description",
    "with_default_backlog",
]
