# Lets the tests import scripts.own_services (pytest.ini: pythonpath = .); the scripts still run as files.
