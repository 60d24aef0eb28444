"""hermes-fleet: keep a fleet of Hermes gateways converged to fleet.yaml."""

__version__ = "0.1.0"
