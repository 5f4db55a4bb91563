"""``speech_router/edge.py`` subclasses uvicorn's httptools protocol and reads its internals, which uvicorn may
change in any release. pyproject.toml pins uvicorn to the versions they were read from; these tests fail when the
installed uvicorn is not what edge.py was written against. Then read edge.py against the new uvicorn, fix it, and
move the pin and ``DIGESTS`` together.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import inspect
import re
import textwrap
from pathlib import Path

import uvicorn
from packaging.requirements import Requirement
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from speech_router import edge

#: sha256 of the source of what edge.py copies or builds on: ``data_received`` (edge's is uvicorn's with the limits
#: around the same parser handling), ``on_message_complete`` and ``on_response_complete`` (edge arms uvicorn's
#: keep-alive timer as the latter does), and the cycle's ``receive`` (what ``disconnected`` and ``message_event``,
#: set by edge's refusals, make the app see)
DIGESTS = {  # uvicorn 0.55.0
    "HttpToolsProtocol.data_received": "02c2572f1df559070eba7f206a3f7e251782f5af4aaae194fc1ffb67f24c3873",
    "HttpToolsProtocol.on_message_complete": "377f9122ee6f3ab87995f6baba01667ec1e2b22543a8e09e83aa334973018f10",
    "HttpToolsProtocol.on_response_complete": "5684fd801d0683ac20b9144e8eed8327e445236d5c1d16a02253dfb3a35b9a75",
    "RequestResponseCycle.receive": "817bd782de41bd0a08d52d395b5e80c37297b59dc4f542cd122b51caf6d4a947",
}


def _digest(name: str) -> str:
    cls, method = name.split(".")
    source = inspect.getsource(getattr({"HttpToolsProtocol": HttpToolsProtocol,
                                        "RequestResponseCycle": RequestResponseCycle}[cls], method))
    return hashlib.sha256(textwrap.dedent(source).encode()).hexdigest()


def _edge_class() -> ast.ClassDef:
    tree = ast.parse(Path(edge.__file__).read_text())
    return next(node for node in ast.walk(tree)
                if isinstance(node, ast.ClassDef) and node.name == "LimitedHttpToolsProtocol")


def _assigned(source: str) -> set[str]:
    """Attributes a class's source assigns to ``self`` (``self.x = ...``, ``self.x: T = ...``)."""
    return set(re.findall(r"self\.(\w+)(?:\s*:[^=\n]+)?\s*\+?=(?!=)", source))


def test_the_installed_uvicorn_is_one_the_pin_allows():
    wanted = next(Requirement(r) for r in importlib.metadata.requires("speech-router") or []
                  if Requirement(r).name == "uvicorn")
    assert wanted.specifier.contains(uvicorn.__version__), (uvicorn.__version__, str(wanted.specifier))


def test_what_edge_copies_or_builds_on_is_unchanged():
    changed = {name: _digest(name) for name, digest in DIGESTS.items() if _digest(name) != digest}
    assert not changed, f"uvicorn {uvicorn.__version__} changed what edge.py relies on: {changed}"


def test_edge_overrides_uvicorns_methods_with_their_signatures():
    overridden = [node.name for node in _edge_class().body
                  if isinstance(node, ast.FunctionDef) and hasattr(HttpToolsProtocol, node.name)]
    assert {"connection_made", "connection_lost", "data_received", "on_headers_complete"} <= set(overridden)
    for name in overridden:
        theirs = list(inspect.signature(getattr(HttpToolsProtocol, name)).parameters)
        ours = list(inspect.signature(getattr(edge.LimitedHttpToolsProtocol, name)).parameters)
        assert ours == theirs, (name, ours, theirs)


def test_everything_edge_reads_of_the_protocol_and_its_cycle_exists():
    cls = _edge_class()
    source = ast.get_source_segment(Path(edge.__file__).read_text(), cls) or ""
    used = {node.attr for node in ast.walk(cls)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"}
    # edge's own: its methods, its class attributes and the private state it keeps (``self._timer``...); what else
    # it reads or sets (``self.transport``, ``self.timeout_keep_alive_task``) is uvicorn's
    own = {node.name for node in cls.body if isinstance(node, ast.FunctionDef)}
    own |= {node.target.id for node in cls.body if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)}
    own |= {name for name in _assigned(source) if name.startswith("_") and not hasattr(HttpToolsProtocol, name)}
    theirs = _assigned(inspect.getsource(HttpToolsProtocol)) | set(dir(HttpToolsProtocol))
    missing = sorted(used - own - theirs)
    assert not missing, f"edge.py uses what uvicorn {uvicorn.__version__}'s HttpToolsProtocol lacks: {missing}"
    cycle_used = {node.attr for node in ast.walk(cls)
                  if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "cycle"}
    cycle_used |= {node.attr for node in ast.walk(cls) if isinstance(node, ast.Attribute)
                   and isinstance(node.value, ast.Attribute) and node.value.attr == "cycle"}
    missing = sorted(cycle_used - _assigned(inspect.getsource(RequestResponseCycle)) - set(dir(RequestResponseCycle)))
    assert {"response_complete", "disconnected", "message_event"} <= cycle_used
    assert not missing, f"edge.py uses what uvicorn {uvicorn.__version__}'s RequestResponseCycle lacks: {missing}"
