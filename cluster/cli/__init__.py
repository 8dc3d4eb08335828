"""The `kairos` command line: start and stop the embedded default, demo, status, catalogs."""
