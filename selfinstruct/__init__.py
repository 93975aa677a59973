"""selfinstruct: grow an instruction-tuning dataset from a seed set with Self-Instruct, then
LoRA-finetune a model on it. Importing the package loads no heavy library (no torch)."""

from .config import ConfigError, PipelineConfig, load_config
from .records import Candidate, Instance, Rejection, Task, TaskFormatError, load_tasks

__version__ = "0.1.0"
__all__ = ["ConfigError", "PipelineConfig", "load_config", "Candidate", "Instance", "Rejection", "Task",
           "TaskFormatError", "load_tasks", "__version__"]
