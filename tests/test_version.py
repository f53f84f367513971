"""One source for the version: pyproject.toml's [project] version, read back through the installed metadata."""

from __future__ import annotations

import re
import tomllib

import pytest

from helpers import REPO


def test_the_package_reports_the_pyproject_version():
    import hybridembed

    declared = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    assert hybridembed.__version__ == declared, "reinstall (make install) after changing pyproject.toml's version"


def test_no_module_hard_codes_a_version():
    source = (REPO / "src" / "hybridembed" / "__init__.py").read_text(encoding="utf-8")
    assert not re.search(r"__version__\s*=\s*[\"']\d+\.\d+", source)


def test_the_cli_prints_it(capsys):
    import hybridembed
    from hybridembed.cli import main

    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"hybridembed {hybridembed.__version__}"
