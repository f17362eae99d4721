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

class ExportClassifierRequest(_message.Message):
    __slots__ = ("check_texts",)
    CHECK_TEXTS_FIELD_NUMBER: _ClassVar[int]
    check_texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, check_texts: _Optional[_Iterable[str]] = ...) -> None: ...

class LinearTextClassifier(_message.Message):
    __slots__ = ("token_pattern", "lowercase", "stop_words", "terms", "idf", "weights", "intercepts", "calibration_a", "calibration_b")
    TOKEN_PATTERN_FIELD_NUMBER: _ClassVar[int]
    LOWERCASE_FIELD_NUMBER: _ClassVar[int]
    STOP_WORDS_FIELD_NUMBER: _ClassVar[int]
    TERMS_FIELD_NUMBER: _ClassVar[int]
    IDF_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    INTERCEPTS_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_A_FIELD_NUMBER: _ClassVar[int]
    CALIBRATION_B_FIELD_NUMBER: _ClassVar[int]
    token_pattern: str
    lowercase: bool
    stop_words: _containers.RepeatedScalarFieldContainer[str]
    terms: _containers.RepeatedScalarFieldContainer[str]
    idf: _containers.RepeatedScalarFieldContainer[float]
    weights: _containers.RepeatedScalarFieldContainer[float]
    intercepts: _containers.RepeatedScalarFieldContainer[float]
    calibration_a: _containers.RepeatedScalarFieldContainer[float]
    calibration_b: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, token_pattern: _Optional[str] = ..., lowercase: _Optional[bool] = ..., stop_words: _Optional[_Iterable[str]] = ..., terms: _Optional[_Iterable[str]] = ..., idf: _Optional[_Iterable[float]] = ..., weights: _Optional[_Iterable[float]] = ..., intercepts: _Optional[_Iterable[float]] = ..., calibration_a: _Optional[_Iterable[float]] = ..., calibration_b: _Optional[_Iterable[float]] = ...) -> None: ...

class ExportClassifierResponse(_message.Message):
    __slots__ = ("model", "category", "input_threshold", "linear", "check_scores")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    INPUT_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    LINEAR_FIELD_NUMBER: _ClassVar[int]
    CHECK_SCORES_FIELD_NUMBER: _ClassVar[int]
    model: str
    category: str
    input_threshold: float
    linear: LinearTextClassifier
    check_scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, model: _Optional[str] = ..., category: _Optional[str] = ..., input_threshold: _Optional[float] = ..., linear: _Optional[_Union[LinearTextClassifier, _Mapping]] = ..., check_scores: _Optional[_Iterable[float]] = ...) -> None: ...
