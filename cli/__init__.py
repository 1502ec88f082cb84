"""The ``matforge`` command line. Sub-command modules import heavy libraries only inside ``run``."""
