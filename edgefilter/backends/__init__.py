"""Backend-specific lowerings, behind one switch (see ``edgefilter.backends.xla_cpu``)."""
