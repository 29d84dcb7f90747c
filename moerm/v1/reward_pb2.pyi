from moerm.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FeedbackOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_OUTCOME_UNSPECIFIED: _ClassVar[FeedbackOutcome]
    FEEDBACK_OUTCOME_APPLIED: _ClassVar[FeedbackOutcome]
    FEEDBACK_OUTCOME_DUPLICATE: _ClassVar[FeedbackOutcome]
    FEEDBACK_OUTCOME_NOT_FOUND: _ClassVar[FeedbackOutcome]
    FEEDBACK_OUTCOME_NO_ARM: _ClassVar[FeedbackOutcome]
FEEDBACK_OUTCOME_UNSPECIFIED: FeedbackOutcome
FEEDBACK_OUTCOME_APPLIED: FeedbackOutcome
FEEDBACK_OUTCOME_DUPLICATE: FeedbackOutcome
FEEDBACK_OUTCOME_NOT_FOUND: FeedbackOutcome
FEEDBACK_OUTCOME_NO_ARM: FeedbackOutcome

class ScoreItem(_message.Message):
    __slots__ = ("id", "prompt", "messages", "response")
    ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FIELD_NUMBER: _ClassVar[int]
    id: str
    prompt: str
    messages: _containers.RepeatedCompositeFieldContainer[_tensor_pb2.Message]
    response: str
    def __init__(self, id: _Optional[str] = ..., prompt: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[_tensor_pb2.Message, _Mapping]]] = ..., response: _Optional[str] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("items", "return_breakdown", "policy", "reward_model", "per_item_errors")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    RETURN_BREAKDOWN_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REWARD_MODEL_FIELD_NUMBER: _ClassVar[int]
    PER_ITEM_ERRORS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[ScoreItem]
    return_breakdown: bool
    policy: str
    reward_model: str
    per_item_errors: bool
    def __init__(self, items: _Optional[_Iterable[_Union[ScoreItem, _Mapping]]] = ..., return_breakdown: _Optional[bool] = ..., policy: _Optional[str] = ..., reward_model: _Optional[str] = ..., per_item_errors: _Optional[bool] = ...) -> None: ...

class ScoreResult(_message.Message):
    __slots__ = ("id", "reward", "task", "route_confidence", "capabilities", "reward_models", "bundle_version", "cached", "policy", "member_rewards", "truncated", "error", "missing_reward_models")
    class CapabilitiesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MemberRewardsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ROUTE_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    CAPABILITIES_FIELD_NUMBER: _ClassVar[int]
    REWARD_MODELS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    MEMBER_REWARDS_FIELD_NUMBER: _ClassVar[int]
    TRUNCATED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MISSING_REWARD_MODELS_FIELD_NUMBER: _ClassVar[int]
    id: str
    reward: float
    task: str
    route_confidence: float
    capabilities: _containers.ScalarMap[str, float]
    reward_models: _containers.RepeatedScalarFieldContainer[str]
    bundle_version: str
    cached: bool
    policy: str
    member_rewards: _containers.ScalarMap[str, float]
    truncated: bool
    error: ItemError
    missing_reward_models: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, id: _Optional[str] = ..., reward: _Optional[float] = ..., task: _Optional[str] = ..., route_confidence: _Optional[float] = ..., capabilities: _Optional[_Mapping[str, float]] = ..., reward_models: _Optional[_Iterable[str]] = ..., bundle_version: _Optional[str] = ..., cached: _Optional[bool] = ..., policy: _Optional[str] = ..., member_rewards: _Optional[_Mapping[str, float]] = ..., truncated: _Optional[bool] = ..., error: _Optional[_Union[ItemError, _Mapping]] = ..., missing_reward_models: _Optional[_Iterable[str]] = ...) -> None: ...

class ItemError(_message.Message):
    __slots__ = ("code", "field", "description")
    CODE_FIELD_NUMBER: _ClassVar[int]
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    code: int
    field: str
    description: str
    def __init__(self, code: _Optional[int] = ..., field: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("results", "bundle_version", "request_id")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_VERSION_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ScoreResult]
    bundle_version: str
    request_id: str
    def __init__(self, results: _Optional[_Iterable[_Union[ScoreResult, _Mapping]]] = ..., bundle_version: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class FeedbackItem(_message.Message):
    __slots__ = ("id", "reward", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    reward: float
    request_id: str
    def __init__(self, id: _Optional[str] = ..., reward: _Optional[float] = ..., request_id: _Optional[str] = ...) -> None: ...

class FeedbackRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[FeedbackItem]
    def __init__(self, items: _Optional[_Iterable[_Union[FeedbackItem, _Mapping]]] = ...) -> None: ...

class FeedbackResult(_message.Message):
    __slots__ = ("id", "outcome", "request_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    outcome: FeedbackOutcome
    request_id: str
    def __init__(self, id: _Optional[str] = ..., outcome: _Optional[_Union[FeedbackOutcome, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class FeedbackResponse(_message.Message):
    __slots__ = ("results", "applied")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    APPLIED_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[FeedbackResult]
    applied: int
    def __init__(self, results: _Optional[_Iterable[_Union[FeedbackResult, _Mapping]]] = ..., applied: _Optional[int] = ...) -> None: ...
