"""Fixtures that several integration test modules ask for by name: pytest finds them here, so no module imports
a fixture (an imported fixture reads to a linter as an unused import that a test's argument then redefines)."""

from tests.integration.omni import omni_nodes  # noqa: F401 - emulated vllm-omni nodes
from tests.integration.test_reload import file_router  # noqa: F401 - a router started from a YAML file
