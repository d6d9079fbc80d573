from collm_serve.proto.collm.v1 import agent_pb2 as _agent_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class EpisodeStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EPISODE_STATUS_UNSPECIFIED: _ClassVar[EpisodeStatus]
    EPISODE_STATUS_OK: _ClassVar[EpisodeStatus]
    EPISODE_STATUS_FAILED: _ClassVar[EpisodeStatus]
EPISODE_STATUS_UNSPECIFIED: EpisodeStatus
EPISODE_STATUS_OK: EpisodeStatus
EPISODE_STATUS_FAILED: EpisodeStatus

class EpisodeSpec(_message.Message):
    __slots__ = ("problem_id", "problem_index", "split", "seed", "group_size")
    PROBLEM_ID_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_INDEX_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    problem_id: str
    problem_index: int
    split: str
    seed: int
    group_size: int
    def __init__(self, problem_id: _Optional[str] = ..., problem_index: _Optional[int] = ..., split: _Optional[str] = ..., seed: _Optional[int] = ..., group_size: _Optional[int] = ...) -> None: ...

class RunEpisodeRequest(_message.Message):
    __slots__ = ("episode",)
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    episode: EpisodeSpec
    def __init__(self, episode: _Optional[_Union[EpisodeSpec, _Mapping]] = ...) -> None: ...

class TurnResult(_message.Message):
    __slots__ = ("turn_id", "parent_turn_id", "turn_index", "branch_index", "reward", "feedback", "done")
    class FeedbackEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TURN_ID_FIELD_NUMBER: _ClassVar[int]
    PARENT_TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TURN_INDEX_FIELD_NUMBER: _ClassVar[int]
    BRANCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    REWARD_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    turn_id: int
    parent_turn_id: int
    turn_index: int
    branch_index: int
    reward: float
    feedback: _containers.ScalarMap[str, str]
    done: bool
    def __init__(self, turn_id: _Optional[int] = ..., parent_turn_id: _Optional[int] = ..., turn_index: _Optional[int] = ..., branch_index: _Optional[int] = ..., reward: _Optional[float] = ..., feedback: _Optional[_Mapping[str, str]] = ..., done: _Optional[bool] = ...) -> None: ...

class RunEpisodeResponse(_message.Message):
    __slots__ = ("episode_id", "status", "failure_reason", "final_return", "turns", "task", "split", "problem_id", "seed", "group_size")
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FAILURE_REASON_FIELD_NUMBER: _ClassVar[int]
    FINAL_RETURN_FIELD_NUMBER: _ClassVar[int]
    TURNS_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    status: EpisodeStatus
    failure_reason: str
    final_return: float
    turns: _containers.RepeatedCompositeFieldContainer[TurnResult]
    task: str
    split: str
    problem_id: str
    seed: int
    group_size: int
    def __init__(self, episode_id: _Optional[str] = ..., status: _Optional[_Union[EpisodeStatus, str]] = ..., failure_reason: _Optional[str] = ..., final_return: _Optional[float] = ..., turns: _Optional[_Iterable[_Union[TurnResult, _Mapping]]] = ..., task: _Optional[str] = ..., split: _Optional[str] = ..., problem_id: _Optional[str] = ..., seed: _Optional[int] = ..., group_size: _Optional[int] = ...) -> None: ...

class StreamEpisodeRequest(_message.Message):
    __slots__ = ("episode",)
    EPISODE_FIELD_NUMBER: _ClassVar[int]
    episode: EpisodeSpec
    def __init__(self, episode: _Optional[_Union[EpisodeSpec, _Mapping]] = ...) -> None: ...

class EpisodeStarted(_message.Message):
    __slots__ = ("episode_id", "task", "split", "problem_id", "seed", "group_size", "num_turns", "agents")
    EPISODE_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    SPLIT_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_ID_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_TURNS_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    episode_id: str
    task: str
    split: str
    problem_id: str
    seed: int
    group_size: int
    num_turns: int
    agents: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, episode_id: _Optional[str] = ..., task: _Optional[str] = ..., split: _Optional[str] = ..., problem_id: _Optional[str] = ..., seed: _Optional[int] = ..., group_size: _Optional[int] = ..., num_turns: _Optional[int] = ..., agents: _Optional[_Iterable[str]] = ...) -> None: ...

class AgentAction(_message.Message):
    __slots__ = ("agent", "turn_index", "branch_index", "parent_turn_id", "text", "num_tokens", "sum_logprob", "finish_reason", "adapter", "latency_ms")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TURN_INDEX_FIELD_NUMBER: _ClassVar[int]
    BRANCH_INDEX_FIELD_NUMBER: _ClassVar[int]
    PARENT_TURN_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NUM_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SUM_LOGPROB_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    ADAPTER_FIELD_NUMBER: _ClassVar[int]
    LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    agent: str
    turn_index: int
    branch_index: int
    parent_turn_id: int
    text: str
    num_tokens: int
    sum_logprob: float
    finish_reason: str
    adapter: _agent_pb2.AdapterRef
    latency_ms: float
    def __init__(self, agent: _Optional[str] = ..., turn_index: _Optional[int] = ..., branch_index: _Optional[int] = ..., parent_turn_id: _Optional[int] = ..., text: _Optional[str] = ..., num_tokens: _Optional[int] = ..., sum_logprob: _Optional[float] = ..., finish_reason: _Optional[str] = ..., adapter: _Optional[_Union[_agent_pb2.AdapterRef, _Mapping]] = ..., latency_ms: _Optional[float] = ...) -> None: ...

class StreamEpisodeResponse(_message.Message):
    __slots__ = ("started", "action", "turn", "finished")
    STARTED_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    FINISHED_FIELD_NUMBER: _ClassVar[int]
    started: EpisodeStarted
    action: AgentAction
    turn: TurnResult
    finished: RunEpisodeResponse
    def __init__(self, started: _Optional[_Union[EpisodeStarted, _Mapping]] = ..., action: _Optional[_Union[AgentAction, _Mapping]] = ..., turn: _Optional[_Union[TurnResult, _Mapping]] = ..., finished: _Optional[_Union[RunEpisodeResponse, _Mapping]] = ...) -> None: ...
