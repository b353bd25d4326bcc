"""Nothing in nbdiffuse opens a port or a tunnel (hosted platforms ban or block them; DESIGN "Hosted Jupyter"):
a process that loads a model, generates, runs a grid, builds the panel and the doctor's report holds no listening
socket afterwards, and no module of the package imports a server or tunnel library. (Ray, the one exception a user
asks for with executor="ray", binds to the loopback interface only: tests/test_fanout.py.)"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "src" / "nbdiffuse"

WORK = r"""
import os, re
from pathlib import Path
import nbdiffuse
s = nbdiffuse.Session(outputs_dir=None, progress=False)
s.load("toy")
s.txt2img(prompt="a red circle", steps=3, n_iter=2, enable_hr=True, hr_scale=1.5)
s.xyz(x=("Steps", "2, 3"), prompt="a", show=False)
panel = s.panel()
nbdiffuse.doctor(s, file=open(os.devnull, "w"))

def listening_inodes():
    found = set()
    for name in ("tcp", "tcp6", "udp", "udp6"):
        for line in Path(f"/proc/net/{name}").read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A" or name.startswith("udp"):  # TCP LISTEN, or any bound UDP socket
                found.add(f[9])
    return found

mine = set()
for fd in os.listdir("/proc/self/fd"):
    try:
        m = re.fullmatch(r"socket:\[(\d+)\]", os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        continue
    if m:
        mine.add(m.group(1))
print("SOCKETS", len(mine), "LISTENING", sorted(mine & listening_inodes()))
"""

SERVERS = ("http.server", "socketserver", "flask", "gradio", "fastapi", "uvicorn", "aiohttp", "tornado.web",
           "pyngrok", "ngrok", "localtunnel", "cloudflared", "websockets.server", "xmlrpc.server", "zmq")


def test_a_working_session_holds_no_listening_socket():
    out = subprocess.run([sys.executable, "-c", WORK], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    line = [x for x in out.stdout.splitlines() if x.startswith("SOCKETS")][-1]
    assert line.endswith("LISTENING []"), line


def test_no_module_imports_a_server_or_a_tunnel():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.relative_to(PACKAGE)}:{node.lineno} {n}" for n in names
                          if any(n == s or n.startswith(s + ".") for s in SERVERS)]
            if isinstance(node, ast.Attribute) and node.attr in ("bind", "listen", "serve_forever"):
                offenders.append(f"{path.relative_to(PACKAGE)}:{node.lineno} .{node.attr}(")
    assert not offenders, offenders
