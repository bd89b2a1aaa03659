"""A real PostgreSQL server for the scene memory tests: started on loopback, a free port."""

from contextlib import contextmanager
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from typing import Iterator, Optional

import pytest

_databases = itertools.count()


def pg_program(name: str) -> Optional[str]:
    """Return the path of a PostgreSQL server program (pg_ctl, initdb), None if absent."""
    found = shutil.which(name)
    if found:
        return found
    # Debian and Ubuntu keep the server programs off PATH, one folder per major version.
    versions = glob.glob(f'/usr/lib/postgresql/[0-9]*/bin/{name}')
    return max(versions, key=lambda path: int(path.split('/')[4]), default=None)


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


@contextmanager
def running_postgres() -> Iterator[str]:
    """
    Run PostgreSQL (trust auth, 127.0.0.1, a free port); yield its URL without a database.

    Skips the test where pg_ctl / initdb or psycopg are missing, or where it runs as root and
    there is no postgres user to run the server as.
    """
    pg_ctl, initdb = pg_program('pg_ctl'), pg_program('initdb')
    if pg_ctl is None or initdb is None:
        pytest.skip('pg_ctl / initdb not found: install PostgreSQL to test the fleet store')
    psycopg = pytest.importorskip('psycopg', reason='psycopg is not installed')
    as_owner: list[str] = []
    folder = tempfile.mkdtemp(prefix='vlm-memory-pg-')
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root: the data folder is the postgres user's.
        try:
            owner = pwd.getpwnam('postgres')
        except KeyError:
            shutil.rmtree(folder)
            pytest.skip('running as root and there is no postgres user to run the server')
        os.chown(folder, owner.pw_uid, owner.pw_gid)
        as_owner = ['runuser', '-u', 'postgres', '--']
    data = os.path.join(folder, 'data')
    try:
        subprocess.run([*as_owner, initdb, '-D', data, '-U', 'postgres', '-A', 'trust',
                        '-E', 'UTF8', '--no-sync'], check=True, capture_output=True,
                       timeout=60)
        for _ in range(3):  # a port found free may be taken before the server binds it
            port = free_port()
            options = (f'-c listen_addresses=127.0.0.1 -p {port} -k {folder} '
                       '-c fsync=off -c synchronous_commit=off -c full_page_writes=off')
            started = subprocess.run(
                [*as_owner, pg_ctl, '-D', data, '-l', os.path.join(folder, 'log'), '-w',
                 '-t', '30', '-o', options, 'start'], capture_output=True, timeout=60)
            if started.returncode == 0:
                break
        else:
            with open(os.path.join(folder, 'log')) as log:
                pytest.fail('the test PostgreSQL server did not start:\n' + log.read())
        url = f'postgresql://postgres@127.0.0.1:{port}'
        with psycopg.connect(f'{url}/postgres', connect_timeout=10):
            pass
        yield url
    finally:
        subprocess.run([*as_owner, pg_ctl, '-D', data, '-m', 'immediate', '-w', 'stop'],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def new_database(server_url: str) -> Iterator[str]:
    """Create an empty database on the server; yield its URL; drop it (and its sessions)."""
    import psycopg

    name = f'memory_{os.getpid()}_{next(_databases)}'
    with psycopg.connect(f'{server_url}/postgres', autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE {name}')
    try:
        yield f'{server_url}/{name}'
    finally:
        with psycopg.connect(f'{server_url}/postgres', autocommit=True) as admin:
            admin.execute(f'DROP DATABASE {name} WITH (FORCE)')
