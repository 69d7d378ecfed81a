import pytest


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    """One work folder for the fault rows: the tiny inputs and reference runs are built once."""
    return tmp_path_factory.mktemp("faults")
