"""What every e2e module shares: local addresses, the names of flowgate's headers and gauges the
checks read, and how a run ends early (the overall deadline, or a failed setup step)."""

LOCALHOST = "127.0.0.1"
DEST_HEADER = "x-gateway-destination-endpoint"
QUEUE_GAUGE = "inference_extension_flow_control_queue_size"


class GlobalTimeout(Exception):
    pass


class SkipRest(Exception):
    """A setup step failed; remaining checks of the phase cannot run."""
