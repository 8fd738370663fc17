"""runtime/ runs in Pyodide (Python 3.14, no numpy): its modules import only the standard library."""

import ast
import sys
from pathlib import Path


def test_runtime_is_standard_library_only():
    """runtime/ runs in Pyodide: only the standard library (and its own modules) may be imported at top level."""
    allowed = set(sys.stdlib_module_names) | {"runtime"}
    native_only = {"native.py": {"numpy", "onnxruntime"}, "web.py": {"js", "pyodide"}}
    for path in (Path(__file__).resolve().parent.parent / "runtime").glob("*.py"):
        for node in ast.parse(path.read_text()).body:  # module level: lazy imports inside functions are fine
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else ([node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            )
            for name in names:
                top = name.split(".")[0]
                assert top in allowed or top in native_only.get(path.name, ()), f"{path.name} imports {name}"
