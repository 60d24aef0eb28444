"""The names of the `HERMES_FLEET_*` environment variables: the fleet contract every gateway is started with,
and the few the fleet's own processes read. In the bottom layer so that every layer names them from here."""

from __future__ import annotations

FLEET_ENV_PREFIX = "HERMES_FLEET_"  # reserved: a profile's env may not set a name that starts with it

PROFILE_ENV = "HERMES_FLEET_PROFILE"
STATE_DIR_ENV = "HERMES_FLEET_STATE_DIR"
STATE_FILE_ENV = "HERMES_FLEET_STATE_FILE"
STOP_FILE_ENV = "HERMES_FLEET_STOP_FILE"
SPEC_HASH_ENV = "HERMES_FLEET_SPEC_HASH"

# Set by hermes-fleet for every gateway (see docs/architecture.md, the fleet contract).
CONTRACT_ENV = (PROFILE_ENV, STATE_DIR_ENV, STATE_FILE_ENV, STOP_FILE_ENV, SPEC_HASH_ENV)

SERVICE_ENV = "HERMES_FLEET_SERVICE"  # which service manager started the controller
SECRET_ARG_PREFIX = "HERMES_FLEET_SECRET_ARG_"  # exports: env keys carrying a secret word of the command
