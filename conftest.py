"""pytest configuration shared by the test suite and the doctests of src/qdmed."""

# running ``python -m qdmed`` on import would exit the test process
collect_ignore = ["src/qdmed/__main__.py"]
