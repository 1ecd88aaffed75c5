"""The gateway: the one channel between a sandboxed workflow and its worker.

Inside the sandbox, `GatewayJournal` (over `GatewayClient`) is the engine's journal; on the
worker's side, `GatewayServer` listens and `GatewayService` answers each typed operation
(`_ops`), asking the worker's `SandboxHost` about what concerns the sandbox itself.
"""

from ._client import GatewayClient
from ._journal import SANDBOX_WORKSPACE, GatewayJournal
from ._ops import GatewayRequestError
from ._protocol import GATEWAY_ENV
from ._server import GatewayServer
from ._service import GatewayService, Reply, SandboxHost

__all__ = [
    "GATEWAY_ENV",
    "SANDBOX_WORKSPACE",
    "GatewayClient",
    "GatewayJournal",
    "GatewayRequestError",
    "GatewayServer",
    "GatewayService",
    "Reply",
    "SandboxHost",
]
