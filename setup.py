"""Only the package list lives here (everything else: pyproject.toml): the packages under src/, the Hydra
search-path plugin (in the ``hydra_plugins`` namespace) and ``surgvista.conf``, which is the top-level conf/
(its config groups are listed as packages too: setuptools installs data only from listed packages)."""

from setuptools import find_namespace_packages, find_packages, setup

# conf/local/ holds a developer's own, git-ignored overrides: never shipped.
groups = find_namespace_packages("conf", exclude=["*__pycache__*", "local", "local.*"])
conf = ["surgvista.conf", *(f"surgvista.conf.{p}" for p in groups)]
setup(packages=[*find_packages("src"), "hydra_plugins.surgvista_searchpath", *conf])
