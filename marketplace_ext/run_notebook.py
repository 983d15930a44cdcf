"""The process that executes one run: ``python -P -m marketplace_ext.run_notebook JOB.json``.

:mod:`marketplace_ext.runner` starts it in a session of its own, with the run's working
directory as its current directory, and kills its whole process tree (the kernel included) on
timeout or cancellation. It runs papermill in-process and then renders the HTML, so the service
never imports nbconvert or parses big notebooks on its event loop.

``JOB.json`` holds::

    {"notebook": "main.ipynb",              # relative to the working directory
     "output": ".market-run/output.ipynb",  # the executed notebook, saved after every cell
     "html": ".market-run/output.html",     # nbconvert's rendering of it (skipped if empty)
     "result": ".market-run/result.json",   # what happened, written atomically at the end
     "kernel": "grid-python",
     "parameters": {...},                   # validated by runner.validate_parameters
     "context": {"run_id": 7, "unit": "north", "output_dir": "outputs", "input_path": "..."}}

Context values are injected only when the notebook's ``parameters`` cell declares them (see
``runner`` for the convention); they override a user value of the same name.

``result.json``: ``{"ok": bool, "error": "ValueError: boom" | null, "html": bool,
"html_error": str | null}``. The exit status is 0 when the notebook ran through, 1 when it
raised, 2 when papermill could not run it at all.

``python -P -m marketplace_ext.run_notebook --render IN.ipynb OUT.html`` only renders (used for
the partial notebook of a killed run).
"""

from __future__ import annotations

import json
import os
import sys
import threading
from pathlib import Path

# jsonschema imports rfc3987_syntax for its "iri" format checker, which builds a parser at import
# time (over a second on this machine's class). nbformat's schema has no iri formats; without the
# module jsonschema just skips that checker. This process never validates anything else.
sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def render_html(notebook: Path, html: Path) -> None:
    """Render ``notebook`` to standalone HTML (output HTML and scripts sanitized: a product's
    notebook is somebody else's code, and the page is served from the marketplace's origin)."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    body, _ = HTMLExporter(sanitize_html=True).from_notebook_node(nb)
    _write_atomic(html, body)


def _warm_up_html() -> None:
    """Import nbconvert and render a tiny notebook (templates, markdown, highlighting load on
    first use: most of a second) while the kernel works, so the real rendering is quick."""
    try:
        import nbformat

        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("print(1)")
        cell.outputs = [nbformat.v4.new_output("stream", text="1\n")]
        nb.cells = [nbformat.v4.new_markdown_cell("# *warm*"), cell]
        from nbconvert import HTMLExporter

        HTMLExporter(sanitize_html=True).from_notebook_node(nb)
    except Exception:  # the real rendering reports its own errors
        pass


def _describe(exc: BaseException) -> str:
    ename = getattr(exc, "ename", None)
    if ename:  # papermill.PapermillExecutionError: the notebook's own exception
        evalue = getattr(exc, "evalue", "")
        return f"{ename}: {evalue}" if evalue else str(ename)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def execute(job_path: Path) -> int:
    job = json.loads(Path(job_path).read_text(encoding="utf-8"))
    import papermill

    notebook, output = Path(job["notebook"]), Path(job["output"])
    parameters = dict(job.get("parameters") or {})
    context = job.get("context") or {}
    status, error = 0, None
    warm = threading.Thread(target=_warm_up_html, daemon=True) if job.get("html") else None
    if warm is not None:
        warm.start()
    try:
        declared = papermill.inspect_notebook(str(notebook))
        parameters.update({k: v for k, v in context.items() if k in declared})
        papermill.execute_notebook(
            str(notebook), str(output), parameters=parameters, kernel_name=job["kernel"],
            progress_bar=False, log_output=False, cwd=os.getcwd(),
        )
    except papermill.PapermillExecutionError as e:
        status, error = 1, _describe(e)
    except Exception as e:  # no such kernel, kernel died, unreadable notebook, ...
        status, error = 2, _describe(e)
    html_ok, html_error = False, None
    if warm is not None:
        warm.join()
    if job.get("html") and output.exists():
        try:
            render_html(output, Path(job["html"]))
            html_ok = True
        except Exception as e:
            html_error = _describe(e)
    _write_atomic(Path(job["result"]), json.dumps(
        {"ok": status == 0, "error": error, "html": html_ok, "html_error": html_error}))
    return status


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) == 3 and args[0] == "--render":
        render_html(Path(args[1]), Path(args[2]))
        return 0
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    return execute(Path(args[0]))


if __name__ == "__main__":
    sys.exit(main())
