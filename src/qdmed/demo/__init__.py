"""The built-in demonstration: sizing curves, two probe sheets (HER2-targeted CdSe/ZnS and a
cadmium-free InP/ZnS alternative) and, with the imaging stage, a 5-plex breast panel."""

from qdmed.demo._run import example_probes, run_demo

__all__ = ["example_probes", "run_demo"]
