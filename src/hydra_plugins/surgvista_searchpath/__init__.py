"""Hydra search-path plugin: user config folders before surgvista's own configs
(see :mod:`surgvista.utils.config_dirs`).

Acts only on surgvista's applications (the ``main`` search-path entry is surgvista's config folder).
"""

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.plugins.search_path_plugin import SearchPathPlugin


class SurgvistaSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        from surgvista.utils.config_dirs import primary_config_path, user_config_dirs

        primary = primary_config_path()
        if not any(e.provider == "main" and e.path == primary for e in search_path.get_path()):
            return
        for folder in user_config_dirs():  # each before `main`, in the listed order
            search_path.prepend("surgvista-user", f"file://{folder}", anchor=SearchPathQuery(provider="main"))
