"""Pure-Python runtime pieces that run in the browser (Pyodide)."""
