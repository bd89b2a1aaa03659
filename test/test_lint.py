"""ament's own linters over the package: flake8 (ament settings, 99 columns) and pep257."""

from pathlib import Path

from ament_flake8.main import main_with_errors as flake8_main
from ament_pep257.main import main as pep257_main
import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = [str(ROOT / name) for name in ('vlm_perception', 'launch', 'test', 'setup.py')]


@pytest.mark.linter
def test_flake8() -> None:
    rc, errors = flake8_main(argv=PATHS)
    assert rc == 0, f'{len(errors)} flake8 errors:\n' + '\n'.join(errors)


@pytest.mark.linter
def test_pep257() -> None:
    assert pep257_main(argv=PATHS) == 0, 'pep257 errors (printed above)'
