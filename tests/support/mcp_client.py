"""An official MCP client (the Python SDK, `mcp` from PyPI) driving a server
for the tests: connects, initializes, then runs the calls given as JSON and
prints one JSON line per result.

    mcp_client.py stdio CALLS COMMAND [ARG...]
    mcp_client.py http CALLS URL TOKEN

CALLS is a JSON list of ["tools"], ["resources"], ["read", URI] or
["call", NAME, ARGUMENTS]. An argument
"$prev:a.b" is field a.b of the previous call's structured result. The
server command gets this process's whole environment.
"""

import json
import os
import sys

import anyio
import httpx2
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client


def dump(result):
    return json.loads(result.model_dump_json(by_alias=True, exclude_none=True))


def resolve(arguments, previous):
    def value(v):
        if isinstance(v, str) and v.startswith("$prev:"):
            found = previous
            for key in v[len("$prev:"):].split("."):
                found = found[key]
            return found
        return v

    return {k: value(v) for k, v in arguments.items()}


async def drive(read, write, calls):
    async with ClientSession(read, write) as session:
        init = await session.initialize()
        print(json.dumps({"initialized": dump(init)}), flush=True)
        previous = {}
        for call in calls:
            if call[0] == "tools":
                out = await session.list_tools()
            elif call[0] == "resources":
                out = await session.list_resources()
            elif call[0] == "read":
                try:
                    out = await session.read_resource(resolve({"uri": call[1]}, previous)["uri"])
                except Exception as e:  # the server's error, for the test to check
                    print(json.dumps({"error": str(e)}), flush=True)
                    continue
            else:
                out = await session.call_tool(call[1], resolve(call[2], previous))
                previous = out.structured_content or {}
            print(json.dumps({call[0]: dump(out)}), flush=True)


async def main():
    mode, calls = sys.argv[1], json.loads(sys.argv[2])
    if mode == "stdio":
        params = StdioServerParameters(
            command=sys.argv[3], args=sys.argv[4:], env=dict(os.environ)
        )
        async with stdio_client(params) as (read, write):
            await drive(read, write, calls)
    else:
        url, token = sys.argv[3], sys.argv[4]
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            async with streamable_http_client(url, http_client=http) as streams:
                await drive(streams[0], streams[1], calls)


anyio.run(main)
