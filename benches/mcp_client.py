"""The MCP bench's client side: the official Python SDK timing convagent's
tools as an outside agent sees them.

    mcp_client.py stdio CALLS SENDS CONVAGENT
    mcp_client.py http CALLS SENDS URL TOKEN

Makes CALLS `list_conversations` calls and prints each round trip in
microseconds (`call US`), then SENDS `send_message` calls to Telegram chat
900000+i, printing the wall clock (unix ns) at each call's start (`send I NS`)
for the bench to match with the fake Telegram's arrival times.
"""

import json
import os
import sys
import time

import anyio
import httpx2
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client


async def drive(read, write, calls, sends):
    async with ClientSession(read, write) as session:
        await session.initialize()
        for _ in range(10):
            await session.call_tool("list_conversations", {"limit": 5})
        for _ in range(calls):
            began = time.perf_counter_ns()
            result = await session.call_tool("list_conversations", {"limit": 5})
            assert not result.is_error, result
            print(f"call {(time.perf_counter_ns() - began) // 1000}", flush=True)
        for i in range(sends):
            began = time.time_ns()
            result = await session.call_tool(
                "send_message",
                {"channel": "telegram", "recipient": str(900000 + i), "text": f"bench {i}"},
            )
            assert not result.is_error, result
            print(f"send {i} {began}", flush=True)
            await anyio.sleep(0.05)


async def main():
    mode, calls, sends = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    if mode == "stdio":
        params = StdioServerParameters(command=sys.argv[4], args=["mcp"], env=dict(os.environ))
        async with stdio_client(params) as (read, write):
            await drive(read, write, calls, sends)
    else:
        headers = {"Authorization": f"Bearer {sys.argv[5]}"}
        async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
            async with streamable_http_client(sys.argv[4], http_client=http) as streams:
                await drive(streams[0], streams[1], calls, sends)


anyio.run(main)
