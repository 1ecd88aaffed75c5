"""The gateway: the one channel between a sandboxed workflow and its worker."""

from ._client import GatewayClient, GatewayStore, SandboxedContext
from ._protocol import GATEWAY_ENV
from ._server import GatewayServer

__all__ = ["GATEWAY_ENV", "GatewayClient", "GatewayServer", "GatewayStore", "SandboxedContext"]
