"""Data sets, optimizee networks and named optimizee tasks for meta-training and evaluation."""
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
from .registry import Task, conv_task, evaluate_model, get_task, list_tasks, mlp_task, register_task

__all__ = [
    "DATASETS", "BatchStream", "CorruptDataError", "DataDownloadError", "DataNotFoundError", "DatasetInfo",
    "ImageDataset", "dataset_info", "download", "load_dataset", "resolve_data_root",
    "TaskFamily", "channels_for", "fmnist_family",
    "MLP", "ConvNet",
    "Task", "conv_task", "evaluate_model", "get_task", "list_tasks", "mlp_task", "register_task",
]
