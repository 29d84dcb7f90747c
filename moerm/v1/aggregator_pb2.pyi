from moerm.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TaskOutputs(_message.Message):
    __slots__ = ("task", "capabilities", "scores", "hidden")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    task: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    scores: _tensor_pb2.Tensor
    hidden: _tensor_pb2.Tensor
    def __init__(self, task: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., scores: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., hidden: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class AggregateRequest(_message.Message):
    __slots__ = ("batches",)
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[TaskOutputs]
    def __init__(self, batches: _Optional[_Iterable[_Union[TaskOutputs, _Mapping]]] = ...) -> None: ...

class TaskRewards(_message.Message):
    __slots__ = ("task", "rewards", "raw_rewards")
    TASK_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    RAW_REWARDS_FIELD_NUMBER: _ClassVar[int]
    task: str
    rewards: _containers.RepeatedScalarFieldContainer[float]
    raw_rewards: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, task: _Optional[str] = ..., rewards: _Optional[_Iterable[float]] = ..., raw_rewards: _Optional[_Iterable[float]] = ...) -> None: ...

class AggregateResponse(_message.Message):
    __slots__ = ("batches", "bundle_version")
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    batches: _containers.RepeatedCompositeFieldContainer[TaskRewards]
    bundle_version: str
    def __init__(self, batches: _Optional[_Iterable[_Union[TaskRewards, _Mapping]]] = ..., bundle_version: _Optional[str] = ...) -> None: ...
