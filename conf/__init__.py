# Marks conf/ as the package ``surgvista.conf`` (mapped at build time, pyproject [tool.setuptools.package-dir]):
# Hydra's pkg:// search path only reads packages with an __init__.py. Hydra itself ignores this file.
