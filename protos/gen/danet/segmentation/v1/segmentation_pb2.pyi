from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class OutputKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTPUT_KIND_UNSPECIFIED: _ClassVar[OutputKind]
    OUTPUT_KIND_INDEX: _ClassVar[OutputKind]
    OUTPUT_KIND_COLOR: _ClassVar[OutputKind]
    OUTPUT_KIND_OVERLAY: _ClassVar[OutputKind]
    OUTPUT_KIND_STATS: _ClassVar[OutputKind]
    OUTPUT_KIND_CONFIDENCE: _ClassVar[OutputKind]

class LabelEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    LABEL_ENCODING_UNSPECIFIED: _ClassVar[LabelEncoding]
    LABEL_ENCODING_PNG: _ClassVar[LabelEncoding]
    LABEL_ENCODING_RAW: _ClassVar[LabelEncoding]

class Mode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODE_UNSPECIFIED: _ClassVar[Mode]
    MODE_WHOLE: _ClassVar[Mode]
    MODE_SLIDE: _ClassVar[Mode]

class TestTimeAugmentation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TEST_TIME_AUGMENTATION_UNSPECIFIED: _ClassVar[TestTimeAugmentation]
    TEST_TIME_AUGMENTATION_OFFICIAL: _ClassVar[TestTimeAugmentation]
    TEST_TIME_AUGMENTATION_MMSEG: _ClassVar[TestTimeAugmentation]
OUTPUT_KIND_UNSPECIFIED: OutputKind
OUTPUT_KIND_INDEX: OutputKind
OUTPUT_KIND_COLOR: OutputKind
OUTPUT_KIND_OVERLAY: OutputKind
OUTPUT_KIND_STATS: OutputKind
OUTPUT_KIND_CONFIDENCE: OutputKind
LABEL_ENCODING_UNSPECIFIED: LabelEncoding
LABEL_ENCODING_PNG: LabelEncoding
LABEL_ENCODING_RAW: LabelEncoding
MODE_UNSPECIFIED: Mode
MODE_WHOLE: Mode
MODE_SLIDE: Mode
TEST_TIME_AUGMENTATION_UNSPECIFIED: TestTimeAugmentation
TEST_TIME_AUGMENTATION_OFFICIAL: TestTimeAugmentation
TEST_TIME_AUGMENTATION_MMSEG: TestTimeAugmentation

class RawImage(_message.Message):
    __slots__ = ("height", "width", "pixels")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    pixels: bytes
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., pixels: _Optional[bytes] = ...) -> None: ...

class SegmentOptions(_message.Message):
    __slots__ = ("model", "outputs", "label_encoding", "alpha", "mode", "scales", "flip", "max_size", "version", "tta", "base_size", "crop_size", "stride")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    LABEL_ENCODING_FIELD_NUMBER: _ClassVar[int]
    ALPHA_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    FLIP_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TTA_FIELD_NUMBER: _ClassVar[int]
    BASE_SIZE_FIELD_NUMBER: _ClassVar[int]
    CROP_SIZE_FIELD_NUMBER: _ClassVar[int]
    STRIDE_FIELD_NUMBER: _ClassVar[int]
    model: str
    outputs: _containers.RepeatedScalarFieldContainer[OutputKind]
    label_encoding: LabelEncoding
    alpha: float
    mode: Mode
    scales: _containers.RepeatedScalarFieldContainer[float]
    flip: bool
    max_size: int
    version: str
    tta: TestTimeAugmentation
    base_size: _containers.RepeatedScalarFieldContainer[int]
    crop_size: _containers.RepeatedScalarFieldContainer[int]
    stride: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[str] = ..., outputs: _Optional[_Iterable[_Union[OutputKind, str]]] = ..., label_encoding: _Optional[_Union[LabelEncoding, str]] = ..., alpha: _Optional[float] = ..., mode: _Optional[_Union[Mode, str]] = ..., scales: _Optional[_Iterable[float]] = ..., flip: _Optional[bool] = ..., max_size: _Optional[int] = ..., version: _Optional[str] = ..., tta: _Optional[_Union[TestTimeAugmentation, str]] = ..., base_size: _Optional[_Iterable[int]] = ..., crop_size: _Optional[_Iterable[int]] = ..., stride: _Optional[_Iterable[int]] = ...) -> None: ...

class SegmentRequest(_message.Message):
    __slots__ = ("id", "encoded", "raw", "options")
    ID_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    id: str
    encoded: bytes
    raw: RawImage
    options: SegmentOptions
    def __init__(self, id: _Optional[str] = ..., encoded: _Optional[bytes] = ..., raw: _Optional[_Union[RawImage, _Mapping]] = ..., options: _Optional[_Union[SegmentOptions, _Mapping]] = ...) -> None: ...

class LabelMap(_message.Message):
    __slots__ = ("encoding", "height", "width", "dtype", "data")
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    encoding: LabelEncoding
    height: int
    width: int
    dtype: str
    data: bytes
    def __init__(self, encoding: _Optional[_Union[LabelEncoding, str]] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., dtype: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class ClassStat(_message.Message):
    __slots__ = ("id", "name", "pixels", "fraction", "mean_confidence")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    PIXELS_FIELD_NUMBER: _ClassVar[int]
    FRACTION_FIELD_NUMBER: _ClassVar[int]
    MEAN_CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    pixels: int
    fraction: float
    mean_confidence: float
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ..., pixels: _Optional[int] = ..., fraction: _Optional[float] = ..., mean_confidence: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class SegmentResponse(_message.Message):
    __slots__ = ("id", "model", "provider", "height", "width", "labels", "color_png", "overlay_png", "stats", "confidence", "timings_ms", "error", "model_version")
    class TimingsMsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    COLOR_PNG_FIELD_NUMBER: _ClassVar[int]
    OVERLAY_PNG_FIELD_NUMBER: _ClassVar[int]
    STATS_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_MS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    provider: str
    height: int
    width: int
    labels: LabelMap
    color_png: bytes
    overlay_png: bytes
    stats: _containers.RepeatedCompositeFieldContainer[ClassStat]
    confidence: bytes
    timings_ms: _containers.ScalarMap[str, float]
    error: Error
    model_version: str
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., provider: _Optional[str] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., labels: _Optional[_Union[LabelMap, _Mapping]] = ..., color_png: _Optional[bytes] = ..., overlay_png: _Optional[bytes] = ..., stats: _Optional[_Iterable[_Union[ClassStat, _Mapping]]] = ..., confidence: _Optional[bytes] = ..., timings_ms: _Optional[_Mapping[str, float]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., model_version: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Color(_message.Message):
    __slots__ = ("r", "g", "b")
    R_FIELD_NUMBER: _ClassVar[int]
    G_FIELD_NUMBER: _ClassVar[int]
    B_FIELD_NUMBER: _ClassVar[int]
    r: int
    g: int
    b: int
    def __init__(self, r: _Optional[int] = ..., g: _Optional[int] = ..., b: _Optional[int] = ...) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "classes", "palette", "provider", "inputs", "outputs", "metadata", "version", "versions")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    PALETTE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    palette: _containers.RepeatedCompositeFieldContainer[Color]
    provider: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    metadata: _containers.ScalarMap[str, str]
    version: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., palette: _Optional[_Iterable[_Union[Color, _Mapping]]] = ..., provider: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., metadata: _Optional[_Mapping[str, str]] = ..., version: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "default_model")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    default_model: str
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., default_model: _Optional[str] = ...) -> None: ...
