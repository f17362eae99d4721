from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Direction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DIRECTION_UNSPECIFIED: _ClassVar[Direction]
    DIRECTION_INPUT: _ClassVar[Direction]
    DIRECTION_OUTPUT: _ClassVar[Direction]
DIRECTION_UNSPECIFIED: Direction
DIRECTION_INPUT: Direction
DIRECTION_OUTPUT: Direction

class ClassifyRequest(_message.Message):
    __slots__ = ("texts", "direction")
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    DIRECTION_FIELD_NUMBER: _ClassVar[int]
    texts: _containers.RepeatedScalarFieldContainer[str]
    direction: Direction
    def __init__(self, texts: _Optional[_Iterable[str]] = ..., direction: _Optional[_Union[Direction, str]] = ...) -> None: ...

class CategoryResult(_message.Message):
    __slots__ = ("category", "score", "flagged")
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    category: str
    score: float
    flagged: bool
    def __init__(self, category: _Optional[str] = ..., score: _Optional[float] = ..., flagged: _Optional[bool] = ...) -> None: ...

class Classification(_message.Message):
    __slots__ = ("flagged", "categories")
    FLAGGED_FIELD_NUMBER: _ClassVar[int]
    CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    flagged: bool
    categories: _containers.RepeatedCompositeFieldContainer[CategoryResult]
    def __init__(self, flagged: _Optional[bool] = ..., categories: _Optional[_Iterable[_Union[CategoryResult, _Mapping]]] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("results", "model")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[Classification]
    model: str
    def __init__(self, results: _Optional[_Iterable[_Union[Classification, _Mapping]]] = ..., model: _Optional[str] = ...) -> None: ...

class GetClassifierInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetClassifierInfoResponse(_message.Message):
    __slots__ = ("model", "evaluated_categories")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    EVALUATED_CATEGORIES_FIELD_NUMBER: _ClassVar[int]
    model: str
    evaluated_categories: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model: _Optional[str] = ..., evaluated_categories: _Optional[_Iterable[str]] = ...) -> None: ...
