"""The one error type of the fleet's control plane."""


class FleetError(Exception):
    """A fleet problem with a one-line reason for the operator."""
