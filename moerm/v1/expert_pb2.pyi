from moerm.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ExpertItem(_message.Message):
    __slots__ = ("messages", "response")
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Message]
    response: str
    def __init__(self, messages: _Optional[_Iterable[_Union[_tensor_pb2.Message, _Mapping]]] = ..., response: _Optional[str] = ...) -> None: ...

class ExpertRequest(_message.Message):
    __slots__ = ("task", "items", "return_hidden", "return_base", "base_only")
    TASK_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    RETURN_HIDDEN_FIELD_NUMBER: _ClassVar[int]
    RETURN_BASE_FIELD_NUMBER: _ClassVar[int]
    BASE_ONLY_FIELD_NUMBER: _ClassVar[int]
    task: str
    items: _containers.RepeatedCompositeFieldContainer[ExpertItem]
    return_hidden: bool
    return_base: bool
    base_only: bool
    def __init__(self, task: _Optional[str] = ..., items: _Optional[_Iterable[_Union[ExpertItem, _Mapping]]] = ..., return_hidden: _Optional[bool] = ..., return_base: _Optional[bool] = ..., base_only: _Optional[bool] = ...) -> None: ...

class ExpertResponse(_message.Message):
    __slots__ = ("task", "capabilities", "scores", "hidden", "bundle_version", "base_scores", "truncated")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    BASE_SCORES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    task: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    scores: _tensor_pb2.Tensor
    hidden: _tensor_pb2.Tensor
    bundle_version: str
    base_scores: _tensor_pb2.Tensor
    truncated: _containers.RepeatedScalarFieldContainer[bool]
    def __init__(self, task: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., scores: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., hidden: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., bundle_version: _Optional[str] = ..., base_scores: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., truncated: _Optional[_Iterable[bool]] = ...) -> None: ...

class DescribeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExpertDescription(_message.Message):
    __slots__ = ("task", "capabilities", "hidden_size", "backbone", "bundle_version", "lora_layers", "has_base", "norm_mean", "norm_std")
    TASK_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    HIDDEN_SIZE_FIELD_NUMBER: _ClassVar[int]
    BACKBONE_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    LORA_LAYERS_FIELD_NUMBER: _ClassVar[int]
    HAS_BASE_FIELD_NUMBER: _ClassVar[int]
    NORM_MEAN_FIELD_NUMBER: _ClassVar[int]
    NORM_STD_FIELD_NUMBER: _ClassVar[int]
    task: str
    capabilities: _containers.RepeatedScalarFieldContainer[str]
    hidden_size: int
    backbone: str
    bundle_version: str
    lora_layers: _containers.RepeatedScalarFieldContainer[int]
    has_base: bool
    norm_mean: float
    norm_std: float
    def __init__(self, task: _Optional[str] = ..., capabilities: _Optional[_Iterable[str]] = ..., hidden_size: _Optional[int] = ..., backbone: _Optional[str] = ..., bundle_version: _Optional[str] = ..., lora_layers: _Optional[_Iterable[int]] = ..., has_base: _Optional[bool] = ..., norm_mean: _Optional[float] = ..., norm_std: _Optional[float] = ...) -> None: ...
