"""surgvista: SurgVISTA surgical video foundation models on Hydra + PyTorch Lightning."""

__version__ = "0.1.0"

# ${surgvista.teacher_dim:<preset>} in conf/model/surgvista.yaml: registered as soon as any surgvista module is
# imported (Hydra imports a node's _target_ before resolving its arguments).
from surgvista.models.resolvers import register as _register_resolvers  # noqa: E402

_register_resolvers()
