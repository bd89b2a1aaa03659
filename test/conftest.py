"""Test-wide settings: keep DDS traffic on loopback, in a domain of this run's own."""

import os
import random

# Set before any test imports rclpy, and inherited by every process a test starts.
os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
if 'VLM_PERCEPTION_TEST_DOMAIN' not in os.environ:
    os.environ['VLM_PERCEPTION_TEST_DOMAIN'] = str(random.SystemRandom().randint(1, 101))
os.environ['ROS_DOMAIN_ID'] = os.environ['VLM_PERCEPTION_TEST_DOMAIN']

# --- model fixtures (CORE) ---

import pathlib  # noqa: E402,I100 (the environment above is set before anything imports rclpy)
from typing import Iterator  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, pathlib.Path]:
    """Build tiny random models of every supported architecture as local folders."""
    from tiny_models import build_tiny_models

    return build_tiny_models(tmp_path_factory.mktemp('tiny_models'))


@pytest.fixture(scope='session')
def tiny_preset(tmp_path_factory: pytest.TempPathFactory,
                tiny_models: dict[str, pathlib.Path]) -> pathlib.Path:
    """Build a directory preset (preset.json + member folders) of the tiny models."""
    from tiny_models import build_tiny_preset

    return build_tiny_preset(tmp_path_factory.mktemp('tiny_preset'), tiny_models)


# --- scene memory: a real PostgreSQL server (test/postgres_server.py) ---


@pytest.fixture(scope='session')
def postgres_server() -> Iterator[str]:
    """Start PostgreSQL once for the run (skip where absent); yield its URL without a db."""
    from postgres_server import running_postgres

    with running_postgres() as url:
        yield url


@pytest.fixture
def pg_url(postgres_server: str) -> Iterator[str]:
    """Yield the URL of a new, empty database on the test server."""
    from postgres_server import new_database

    with new_database(postgres_server) as url:
        yield url
