"""An MCP server (the official Python SDK's MCPServer) whose one tool never
answers in time: for the tests of a hung tool server."""

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("slow")


@server.tool()
async def lookup_order(order_id: str) -> str:
    """Look up an order by its id."""
    await anyio.sleep(3600)
    return "never"


server.run()
