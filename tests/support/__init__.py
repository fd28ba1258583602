"""What the test modules share: the session's environment, fixtures (registered in tests/conftest.py),
and helpers for real workers, servers and tools. Test modules import from here, never from conftest."""
