"""Task suites: tasks and scorers, the CL-benchmark loader, and the shipped demo slice."""

from lorahive.suites.cl import (
    CLData,
    load_cl,
    load_cl_suite,
    sample_task,
    split_prompt,
    split_tasks,
    truncate_prompt,
)
from lorahive.suites.demo import (
    DEMO_MAX_TOKENS,
    DEMO_TASK_TYPES,
    build_demo_slice,
    demo_dir,
    load_demo,
    load_demo_suite,
)
from lorahive.suites.task import (
    ExactMatch,
    Example,
    LabelMatch,
    Scorer,
    Task,
    map_to_label,
    normalize,
)

__all__ = [
    "DEMO_MAX_TOKENS",
    "DEMO_TASK_TYPES",
    "CLData",
    "Example",
    "ExactMatch",
    "LabelMatch",
    "Scorer",
    "Task",
    "build_demo_slice",
    "demo_dir",
    "load_cl",
    "load_cl_suite",
    "load_demo",
    "load_demo_suite",
    "map_to_label",
    "normalize",
    "sample_task",
    "split_prompt",
    "split_tasks",
    "truncate_prompt",
]
