"""The command line and the server: the only room that imports every other (bench, train, export, runtime)."""
