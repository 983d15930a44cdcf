"""A submitted notebook rendered for reading (model-to-data: the data owner reads the code
before deciding).

The notebook is somebody else's: its markdown and outputs may carry HTML and scripts. It is
rendered by nbconvert with ``sanitize_html`` in a child process (``run_notebook --render``: the
service never imports nbconvert or parses a hostile document in its own process), with a time
limit, and the page that shows it serves the HTML under ``Content-Security-Policy: sandbox``
inside an ``<iframe sandbox>``: even what the sanitizer missed cannot run a script or reach the
service's origin. Renderings are kept in a small in-memory cache by the notebook's sha256.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

from .errors import MarketError

RENDER_TIMEOUT = 60.0
CACHE_SIZE = 16
#: what the sandboxed page may load: nothing but its own inline styles and data: images
VIEW_CSP = ("sandbox; default-src 'none'; style-src 'unsafe-inline'; img-src data:; "
            "font-src data:")

_cache: OrderedDict[str, bytes] = OrderedDict()


class RenderFailed(MarketError):
    status = 422
    code = "render_failed"


async def render(sha256: str, notebook: bytes, tmp_dir: Path | None = None) -> bytes:
    """``notebook`` (its bytes, whose digest is ``sha256``) as sanitized standalone HTML."""
    cached = _cache.get(sha256)
    if cached is not None:
        _cache.move_to_end(sha256)
        return cached
    with tempfile.TemporaryDirectory(prefix="nbview-", dir=tmp_dir) as tmp:
        source, target = Path(tmp) / "notebook.ipynb", Path(tmp) / "notebook.html"
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, source.write_bytes, notebook)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "marketplace_ext.run_notebook", "--render",
            str(source), str(target), stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            _, err = await asyncio.wait_for(proc.communicate(), RENDER_TIMEOUT)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise RenderFailed(f"rendering the notebook took over {RENDER_TIMEOUT:.0f} s; "
                               "download it and read it in JupyterLab", "notebook") from None
        if proc.returncode != 0:
            last = (err.decode(errors="replace").strip().splitlines() or ["failed"])[-1]
            raise RenderFailed(f"the notebook could not be rendered: {last[:300]}", "notebook")
        html = await loop.run_in_executor(None, target.read_bytes)
    _cache[sha256] = html
    while len(_cache) > CACHE_SIZE:
        _cache.popitem(last=False)
    return html
