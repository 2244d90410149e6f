import pytest


@pytest.fixture(autouse=True)
def _engine(prefect_engine):
    """Every flow test runs through the real Prefect engine."""
