"""An MCP server (the official Python SDK's MCPServer) that probes its own
sandbox: what environment it got, whether it can read a file, and what
happens when it allocates without end. For the tests of `[mcp.sandbox]`;
and a booking tool that counts its runs, for the tests of approvals."""

import json
import os
import resource

from mcp.server.mcpserver import MCPServer

server = MCPServer("probe")


@server.tool()
def environment() -> str:
    """The names of the variables this server was started with."""
    # The whole environment goes to a file in the working directory, where
    # the test reads it directly: a tool result is masked on its way back.
    with open("seen_env.json", "w") as f:
        json.dump(dict(os.environ), f)
    return "names: " + " ".join(sorted(os.environ))


@server.tool()
def read_file(path: str) -> str:
    """Reads a file and says how many bytes it holds."""
    try:
        with open(path, "rb") as f:
            return f"read {len(f.read())} bytes"
    except OSError as e:
        return f"refused: {e.strerror}"


@server.tool()
def limits() -> str:
    """The resource limits this server runs under (soft/hard)."""
    names = ["CPU", "DATA", "NOFILE", "NPROC"]
    return " ".join(
        "%s=%d/%d" % ((n,) + resource.getrlimit(getattr(resource, "RLIMIT_" + n)))
        for n in names
    )


@server.tool()
def book_table(people: int) -> str:
    """Books a table; each booking is a line of bookings.txt in the working
    directory, so a test can count how often it really ran."""
    with open("bookings.txt", "a") as f:
        f.write(f"{people}\n")
    with open("bookings.txt") as f:
        n = sum(1 for _ in f)
    return f"booked for {people} (booking #{n})"


@server.tool()
def hog() -> str:
    """Allocates memory without end."""
    blocks = []
    while True:
        blocks.append(bytearray(16 * 1024 * 1024))


server.run()
