"""Run code in a kernel of a user's notebook server, the way JupyterLab does: REST to start
the kernel, the kernel's websocket for execute_request / iopub replies."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import requests
from tornado.httpclient import HTTPRequest
from tornado.websocket import websocket_connect


class KernelError(RuntimeError):
    pass


def spawn_server(hub_url: str, user: str, token: str, timeout: float = 120) -> str:
    """Start ``user``'s default server through the hub API; return its URL prefix."""
    headers = {"Authorization": f"token {token}"}
    r = requests.post(f"{hub_url}/hub/api/users/{user}/server", headers=headers, timeout=30)
    assert r.status_code in (201, 202, 400), r.text  # 400: already running
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        model = requests.get(f"{hub_url}/hub/api/users/{user}", headers=headers, timeout=30).json()
        server = model.get("servers", {}).get("")
        if server and server.get("ready"):
            return f"{hub_url}{server['url']}"
        time.sleep(0.5)
    raise TimeoutError(f"server of {user} not ready after {timeout}s")


def stop_server(hub_url: str, user: str, token: str) -> None:
    requests.delete(f"{hub_url}/hub/api/users/{user}/server",
                    headers={"Authorization": f"token {token}"}, timeout=60)


async def _execute(server_url: str, token: str, code: str, kernel: str, timeout: float) -> str:
    headers = {"Authorization": f"token {token}"}
    r = requests.post(f"{server_url}api/kernels", json={"name": kernel}, headers=headers,
                      timeout=60)
    r.raise_for_status()
    kernel_id = r.json()["id"]
    ws_url = server_url.replace("http", "ws", 1) + f"api/kernels/{kernel_id}/channels"
    conn = await websocket_connect(HTTPRequest(ws_url, headers=headers))
    msg_id = uuid.uuid4().hex
    conn.write_message(json.dumps({
        "header": {"msg_id": msg_id, "username": "test", "session": uuid.uuid4().hex,
                   "msg_type": "execute_request", "version": "5.3"},
        "parent_header": {}, "metadata": {}, "channel": "shell", "buffers": [],
        "content": {"code": code, "silent": False, "store_history": False,
                    "user_expressions": {}, "allow_stdin": False, "stop_on_error": True},
    }))
    out: list[str] = []
    deadline = time.monotonic() + timeout  # for the whole execution, however chatty
    try:
        while True:
            raw = await asyncio.wait_for(conn.read_message(),
                                         max(deadline - time.monotonic(), 0.001))
            if raw is None:
                raise KernelError("kernel websocket closed")
            msg = json.loads(raw)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind, content = msg["msg_type"], msg["content"]
            if kind == "stream":
                out.append(content["text"])
            elif kind == "error":
                raise KernelError(f"{content['ename']}: {content['evalue']}")
            elif kind == "status" and content["execution_state"] == "idle":
                return "".join(out)
    finally:
        conn.close()
        requests.delete(f"{server_url}api/kernels/{kernel_id}", headers=headers, timeout=30)


def execute(server_url: str, token: str, code: str, kernel: str = "grid-python",
            timeout: float = 120) -> str:
    """Run ``code`` in a fresh kernel on the notebook server; return what it printed."""
    return asyncio.run(_execute(server_url, token, code, kernel, timeout))


async def _terminal(server_url: str, token: str, command: str, timeout: float) -> str:
    headers = {"Authorization": f"token {token}"}
    r = requests.post(f"{server_url}api/terminals", headers=headers, timeout=30)
    r.raise_for_status()
    name = r.json()["name"]
    conn = await websocket_connect(HTTPRequest(
        server_url.replace("http", "ws", 1) + f"terminals/websocket/{name}", headers=headers))
    out: list[str] = []
    try:
        # the quotes keep the typed line (echoed back) from matching the marker
        conn.write_message(json.dumps(["stdin", f"{command}; echo @@TERMINAL''DONE@@\r"]))
        deadline = time.monotonic() + timeout
        while "@@TERMINALDONE@@" not in "".join(out):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KernelError(f"terminal: no end after {timeout}s:\n{''.join(out)[-3000:]}")
            try:
                raw = await asyncio.wait_for(conn.read_message(), remaining)
            except TimeoutError:
                continue
            if raw is None:
                raise KernelError(f"terminal closed:\n{''.join(out)[-3000:]}")
            msg = json.loads(raw)
            if msg[0] == "stdout":
                out.append(msg[1])
        return "".join(out)
    finally:
        conn.close()
        requests.delete(f"{server_url}api/terminals/{name}", headers=headers, timeout=30)


def run_in_terminal(server_url: str, token: str, command: str, timeout: float = 60) -> str:
    """Type ``command`` into a new JupyterLab terminal of the server (a shell as the user's
    account, outside the kernel sandbox); return the terminal's output once it has run."""
    return asyncio.run(_terminal(server_url, token, command, timeout))
