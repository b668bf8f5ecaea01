"""modtransfer: does this Transformer modification's gain transfer across tasks?

Public API for plugin authors::

    from modtransfer import ModelSpec, register_variant, register_component
"""

from .components import COMPONENTS, register_component
from .errors import UserError
from .spec import SLOTS, ModelSpec
from .task import TASKS, Budget, Task, register_task
from .variant import VARIANTS, register_variant

__version__ = "0.1.0"
__all__ = [
    "COMPONENTS", "SLOTS", "TASKS", "VARIANTS", "Budget", "ModelSpec", "Task", "UserError",
    "register_component", "register_task", "register_variant",
]
