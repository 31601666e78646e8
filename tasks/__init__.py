"""Data sets, optimizee networks and named optimizee tasks for meta-training and evaluation.

The interface every task and task family satisfies is in :mod:`tasks.base`.
"""
from .base import BatchStreamProtocol, TaskFamilyProtocol, TaskProtocol
from .data import (
    DATASETS,
    BatchStream,
    CorruptDataError,
    DataDownloadError,
    DataNotFoundError,
    DatasetInfo,
    ImageDataset,
    dataset_info,
    download,
    load_dataset,
    resolve_data_root,
)
from .family import TaskFamily, channels_for, fmnist_family
from .models import MLP, ConvNet
from .registry import Task, conv_task, evaluate_model, get_task, list_tasks, mlp_task, register_task, resnet_task
from .regression import RegressionFamily, RegressionTask
from .specs import task_from_spec

__all__ = [
    "BatchStreamProtocol", "TaskFamilyProtocol", "TaskProtocol", "task_from_spec",
    "DATASETS", "BatchStream", "CorruptDataError", "DataDownloadError", "DataNotFoundError", "DatasetInfo",
    "ImageDataset", "dataset_info", "download", "load_dataset", "resolve_data_root",
    "TaskFamily", "channels_for", "fmnist_family",
    "MLP", "ConvNet",
    "Task", "conv_task", "evaluate_model", "get_task", "list_tasks", "mlp_task", "register_task", "resnet_task",
    "RegressionFamily", "RegressionTask",
]
