"""The controller the page runs (Pyodide) and the CLI runs (CPython): standard library only, plus its backends."""
